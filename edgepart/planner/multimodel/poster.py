"""The authors' simulation setup (Jin, Park, Lee, MobiHoc'22 poster; SOLVERS.md §6) [C config.py, main.py].

Devices: an edge server, Jetson TX2 and Raspberry Pi 4B boards, each with a
frequency, a per-model intensity and a memory; the workload of a layer is
its multiply-accumulates times a per-model scale. D IoT devices are the
first D of the authors' list (Pi, Pi, TX2, Pi, Pi, TX2, ...) plus the edge
server. Each requested model comes from its own request device (a Pi that
only sends the input). Every link runs at 100 MiB/s (C log2(1 + SINR) with
SINR = 1, and the edge up/down links alike); a device talks to itself at
memory bandwidth. Requested models cycle through AlexNet, GoogLeNet,
ResNet-50.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.platform import Network, Platform, TableDevice

GIB = 2**30
BANDWIDTH_BPS = 100 * 2**20
MODEL_CYCLE = ("alexnet", "googlenet", "resnet50")
# [C config.py] 'workload_size' per model: seconds = scale x MACs x intensity / frequency
WORKLOAD_SCALE = {"alexnet": 1.5, "googlenet": 0.38, "resnet50": 0.32}


@dataclass(frozen=True)
class DeviceKind:
    label: str
    frequency: float
    intensity: tuple[float, float, float]  # AlexNet, GoogLeNet, ResNet-50
    memory_bytes: int

    def device(self, name: str) -> TableDevice:
        return TableDevice(name, self.frequency, dict(zip(MODEL_CYCLE, self.intensity, strict=True)), self.memory_bytes,
                           WORKLOAD_SCALE)


EDGE_SERVER = DeviceKind("edge server", 3.6e12, (282, 698, 280), 24 * GIB)
JETSON_TX2 = DeviceKind("Jetson TX2", 2.0e12, (301, 772, 300), 8 * GIB)
RASPBERRY_PI_4B = DeviceKind("Raspberry Pi 4B", 1.5e12, (615, 1568, 600), 2 * GIB)
IOT_ORDER = (RASPBERRY_PI_4B, RASPBERRY_PI_4B, JETSON_TX2) * 3
SHORT = {RASPBERRY_PI_4B.label: "pi", JETSON_TX2.label: "tx2"}


def poster_models(count: int) -> tuple[str, ...]:
    """The first `count` requested models: AlexNet, GoogLeNet, ResNet-50, AlexNet, ..."""
    if count < 1:
        raise PlanningError(f"models: need at least one, got {count}")
    return tuple(MODEL_CYCLE[i % len(MODEL_CYCLE)] for i in range(count))


def poster_platform(iot_devices: int, models: int,
                    bandwidth_Bps: float = BANDWIDTH_BPS) -> tuple[Platform, tuple[int, ...]]:  # noqa: N803
    """D IoT devices plus the edge server (the fallback), and one request endpoint per model."""
    if not 0 <= iot_devices <= len(IOT_ORDER):
        raise PlanningError(f"iot_devices: the authors' table has 0 to {len(IOT_ORDER)}, got {iot_devices}")
    devices = [kind.device(f"iot{i}-{SHORT[kind.label]}") for i, kind in enumerate(IOT_ORDER[:iot_devices])]
    devices.append(EDGE_SERVER.device("server"))
    requests = [f"request{i}" for i in range(models)]
    network = Network.uniform([d.name for d in devices] + requests, bandwidth_Bps)
    platform = Platform(tuple(devices), network, len(devices) - 1)
    return platform, tuple(len(devices) + i for i in range(models))
