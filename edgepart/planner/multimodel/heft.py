"""HEFT (Topcuoglu et al.) on a cost graph, as the authors' greedy baseline [C algorithms/Greedy.py].

Tasks in decreasing upward rank (the cost graph's order); each goes to the
device where it would finish earliest, given the tasks already placed, the
same list-scheduling rules as the fitness (no insertion, links not
contended) and the devices' memory. Blocks are ignored: every task is placed
on its own.
"""

from __future__ import annotations

import numpy as np

from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.tasks import CostGraph


def heft(cost: CostGraph) -> tuple[int, ...]:
    """A device per task."""
    m = cost.devices
    finish = np.zeros(cost.tasks)
    device_of = np.full(cost.tasks, -1, dtype=np.int64)
    free = np.zeros(m)
    used = np.zeros(m)
    for v in cost.order.tolist():
        src = int(cost.source[cost.model[v]])
        ready = np.array([cost.tx(src, d, cost.input_bytes[v]) for d in range(m)])
        for u, e in cost.preds[v]:
            du = int(device_of[u])
            ready = np.maximum(ready, [finish[u] + cost.tx(du, d, cost.edge_bytes[e]) for d in range(m)])
        end = np.maximum(ready, free) + cost.compute_s[v]
        if cost.output_bytes[v] > 0:
            end = end + np.array([cost.tx(d, src, cost.output_bytes[v]) for d in range(m)])
        fits = used + cost.memory_bytes[v] <= cost.capacity_bytes
        if not fits.any():
            raise PlanningError(f"HEFT: task {v} ({cost.memory_bytes[v]:.0f} B) fits on no device")
        d = int(np.where(fits, end, np.inf).argmin())
        device_of[v] = d
        finish[v] = np.maximum(ready[d], free[d]) + cost.compute_s[v, d]
        free[d] = finish[v]
        used[d] += cost.memory_bytes[v]
    return tuple(int(d) for d in device_of)
