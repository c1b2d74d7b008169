"""What one partition needs to run: CPU and memory, from the plan and the task's layer graph.

One formula for every runtime that sets limits: the operator's pod requests and limits, and the
containers of `edgepart up --runtime docker`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgepart.graph.layer_graph import LayerGraph
from edgepart.plan import Task
from edgepart.planner.evaluate import task_memory

__all__ = ["ACTIVATION_COPIES", "PROCESS_OVERHEAD_BYTES", "Resources", "partition_resources"]

# Calibrated by tests/unit/test_slice_memory.py, which measures the peak RSS of a process loading and
# warming VGG-16 slices: the imports (torch, fastapi, uvicorn, httpx) and the meta-device trace take
# about 445 MiB before any weights; the first forward pass peaks at about 8 copies of the largest layer
# output (oneDNN scratch, im2col, the live activations).
PROCESS_OVERHEAD_BYTES = 512 * 2**20  # the measured 445 MiB plus 15% for other builds of torch
ACTIVATION_COPIES = 8


@dataclass(frozen=True)
class Resources:
    cpu: float  # cores requested
    memory_request: int  # bytes
    memory_limit: int  # bytes


def _share(region_size: int, full: int) -> float:
    return region_size / full if full else 1.0


def partition_resources(graph: LayerGraph, task: Task, device_cpus: float, partitions_on_device: int,
                        cpu_share: float = 0.8) -> Resources:
    """Requests from the plan: the task's weights and activations, and its share of the device's CPU.

    Memory request = PROCESS_OVERHEAD_BYTES + the task's weights + ACTIVATION_COPIES x the largest layer
    output in its range (scaled to its share of the output) + its input buffers (at least the planner's
    `task_memory`). A partition materialises only its slice's tensors (see `load_part`), so nothing else
    counts. The limit is 1.5 x the request: room for bursts of in-flight requests. CPU: `cpu_share` of the
    device's cores, split evenly among the partitions on it (at least 0.1).
    """
    full_output = math.prod(graph.shape_at(task.stop))
    share = _share(task.output.size, full_output)
    batch = graph.batch
    layers = graph.layers[task.start: task.stop]
    largest = max((layer.out_bytes for layer in layers), default=0) * batch
    input_bytes = sum(i.region.size for i in task.inputs) * 4 * batch
    weights = graph.weight_bytes(task.start, task.stop) if not task.relay else 0
    working = max(weights + int(ACTIVATION_COPIES * largest * share) + input_bytes, task_memory(task, graph))
    request = PROCESS_OVERHEAD_BYTES + working
    limit = request * 3 // 2
    cpu = max(0.1, device_cpus * cpu_share / max(1, partitions_on_device))
    return Resources(cpu=cpu, memory_request=request, memory_limit=limit)
