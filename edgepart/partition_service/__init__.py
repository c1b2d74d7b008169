"""The data plane: tensor frames over HTTP between partitions, the gateway, and their metrics."""

from edgepart.partition_service.config import (
    GATEWAY,
    ConfigError,
    ConnectionLimits,
    DeploymentConfigs,
    GatewayConfig,
    PartitionConfig,
    ServiceSettings,
    load_gateway_config,
    load_partition_config,
    render_configs,
)
from edgepart.partition_service.errors import ServiceError
from edgepart.partition_service.gateway import GatewayService, gateway_app, gateway_internal_app
from edgepart.partition_service.partition import PartitionService, partition_app
from edgepart.partition_service.wire import (
    Frame,
    FrameHeader,
    Limits,
    decode_frame,
    encode_frame,
    frame_bytes,
)

__all__ = [
    "GATEWAY", "ConfigError", "ConnectionLimits", "DeploymentConfigs", "Frame", "FrameHeader", "GatewayConfig",
    "GatewayService", "Limits", "PartitionConfig", "PartitionService", "ServiceError", "ServiceSettings",
    "decode_frame", "encode_frame", "frame_bytes", "gateway_app", "gateway_internal_app", "load_gateway_config",
    "load_partition_config", "partition_app", "render_configs",
]
