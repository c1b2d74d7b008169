"""The fitness: completion time of one request of every model issued together.

List scheduling without insertion [C cpplib.cpp; SOLVERS.md §6 E.3]: tasks
are taken in a priority order that is topological (by default decreasing
HEFT upward rank); a task starts when its inputs have arrived and its device
has finished every task taken before it, and runs for its compute time on
that device. A model is complete when its last task ends (or, when the cost
graph returns outputs, when its output reaches its source); F is the latest
model.

Two link models:

- `free`: a message costs alpha + bytes x seconds-per-byte and never waits
  (the poster's and the authors' model);
- `fifo`: [R] every message between two devices also holds the sender's
  outgoing and the receiver's incoming NIC (`switched`), or the one medium
  (`shared`), from its start to its end; each queue serves messages in the
  order the schedule takes their consumers, without insertion, as devices
  serve tasks. Messages inside a device never queue.

Many candidate assignments are evaluated at once (one row each), with numpy
doing the arithmetic of all rows in each scheduling step. Search code calls
`completion_times` (or `makespans`) and nothing else, so another evaluator
can replace this one behind the same signature.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.tasks import CostGraph

LinkModel = Literal["free", "fifo"]
LINK_MODELS: tuple[LinkModel, ...] = ("free", "fifo")


def completion_times(cost: CostGraph, task_device: np.ndarray, links: LinkModel = "free",
                     priority: np.ndarray | None = None) -> np.ndarray:
    """Per-model completion times, shape (rows, models), of each row of `task_device` (rows, n).

    `priority` (rows, n), lower first, replaces the cost graph's order with one per row; each
    row is decoded into the topological order that takes the ready task of lowest priority.
    """
    devices = np.atleast_2d(np.asarray(task_device, dtype=np.int64))
    n = devices.shape[1]
    if n != cost.tasks:
        raise PlanningError(f"assignment has {n} tasks, the cost graph {cost.tasks}")
    if links not in LINK_MODELS:
        raise PlanningError(f"links must be one of {list(LINK_MODELS)}, got {links!r}")
    if n and (devices.min() < 0 or devices.max() >= cost.devices):
        raise PlanningError(f"assignment: device indices must be in [0, {cost.devices})")
    if priority is None:
        return _Schedule(cost, devices, links == "fifo").run_fixed()
    prio = np.atleast_2d(np.asarray(priority, dtype=float))
    if prio.shape != devices.shape:
        raise PlanningError(f"priority shape {prio.shape} differs from the assignment's {devices.shape}")
    return _Schedule(cost, devices, links == "fifo").run_sequences(decode_orders(cost, prio))


def makespans(cost: CostGraph, task_device: np.ndarray, links: LinkModel = "free",
              priority: np.ndarray | None = None) -> np.ndarray:
    """F per row: the completion time of the last model."""
    latest: np.ndarray = completion_times(cost, task_device, links, priority).max(axis=1)
    return latest


def decode_orders(cost: CostGraph, priority: np.ndarray) -> np.ndarray:
    """Per row, the topological order that always takes the ready task of lowest priority (ties: index)."""
    rows, n = priority.shape
    everyone = np.arange(rows)
    indeg = np.tile(np.bincount(cost.edge_dst, minlength=n), (rows, 1))
    succ_width = max((len(s) for s in cost.succs), default=0)
    succ = np.full((n, max(succ_width, 1)), -1, dtype=np.int64)
    for v, targets in enumerate(cost.succs):
        succ[v, : len(targets)] = targets
    keys = np.where(indeg == 0, priority.astype(float), np.inf)  # the priority of ready tasks, inf otherwise
    sequence = np.empty((rows, n), dtype=np.int64)
    for step in range(n):
        chosen = keys.argmin(axis=1)
        sequence[:, step] = chosen
        keys[everyone, chosen] = np.inf
        for slot in range(succ.shape[1]):
            target = succ[chosen, slot]
            valid = np.flatnonzero(target >= 0)
            if len(valid) == 0:
                continue
            row, task = everyone[valid], target[valid]
            indeg[row, task] -= 1
            freed = indeg[row, task] == 0
            keys[row[freed], task[freed]] = priority[row[freed], task[freed]]
    return sequence


class _Schedule:
    """One scheduling pass over many rows; arrays are task-major so a task's row values are contiguous."""

    def __init__(self, cost: CostGraph, devices: np.ndarray, fifo: bool) -> None:
        self.cost = cost
        self.fifo = fifo
        self.rows = devices.shape[0]
        self.task_dev = np.ascontiguousarray(devices.T)  # (n, rows)
        self.endpoints = cost.alpha_s.shape[0]
        self.finish = np.zeros((cost.tasks + 1, self.rows))  # the extra row: a producer that is never late
        self.device_free = np.zeros(self.rows * cost.devices)
        self.row_dev = np.arange(self.rows) * cost.devices
        self.row_end = np.arange(self.rows) * self.endpoints
        self.done = np.zeros((cost.models, self.rows))
        shared = cost.medium == "shared"
        self.send = np.zeros(self.rows if shared else self.rows * self.endpoints)
        self.recv = self.send if shared else np.zeros(self.rows * self.endpoints)
        self.shared = shared
        # per-edge table of message seconds by (sender, receiver): alpha + bytes x seconds-per-byte
        size = self.endpoints
        self.edge_cost = (cost.alpha_s[None, :, :] + cost.edge_bytes[:, None, None] * cost.s_per_byte[None, :, :])
        self.edge_cost = np.where(cost.edge_bytes[:, None, None] > 0, self.edge_cost, 0.0).reshape(-1, size * size)
        self.input_cost = _message_costs(cost, cost.input_bytes, to_source=False)  # (n, m)
        self.output_cost = _message_costs(cost, cost.output_bytes, to_source=True)  # (n, m)

    def _queue(self, sender: np.ndarray, receiver: np.ndarray, ready: np.ndarray, seconds: np.ndarray,
               remote: np.ndarray) -> np.ndarray:
        """Arrival times of messages ready at `ready`; remote ones wait for both NIC queues (fifo)."""
        unqueued: np.ndarray = ready + seconds
        if not self.fifo:
            return unqueued
        if self.shared:
            start = np.maximum(ready, self.send)
            end = start + seconds
            self.send[:] = np.where(remote, end, self.send)
        else:
            s_idx = self.row_end + sender
            r_idx = self.row_end + receiver
            start = np.maximum(np.maximum(ready, self.send[s_idx]), self.recv[r_idx])
            end = start + seconds
            self.send[s_idx] = np.where(remote, end, self.send[s_idx])
            self.recv[r_idx] = np.where(remote, end, self.recv[r_idx])
        arrival: np.ndarray = np.where(remote, end, unqueued)
        return arrival

    def run_fixed(self) -> np.ndarray:
        cost = self.cost
        fifo = self.fifo
        scaled = self.task_dev * self.endpoints  # sender index into the per-edge tables
        compute = cost.compute_s
        edge_cost = self.edge_cost
        finish = self.finish
        free = self.device_free
        zeros = np.zeros(self.rows)
        for v in cost.order.tolist():
            d = self.task_dev[v]
            ready = None
            if cost.input_bytes[v] > 0:
                src = int(cost.source[cost.model[v]])
                ready = self._queue(np.full(self.rows, src), d, zeros, self.input_cost[v][d], d != src)
            for u, e in cost.preds[v]:
                seconds = edge_cost[e][scaled[u] + d]
                if fifo:
                    du = self.task_dev[u]
                    arrival = self._queue(du, d, finish[u], seconds, du != d)
                else:
                    arrival = finish[u] + seconds
                ready = arrival if ready is None else np.maximum(ready, arrival)
            slot = self.row_dev + d
            start = free[slot] if ready is None else np.maximum(ready, free[slot])
            end = start + compute[v][d]
            finish[v] = end
            free[slot] = end
            if cost.output_bytes[v] > 0:
                mv = int(cost.model[v])
                src = int(cost.source[mv])
                back = self._queue(d, np.full(self.rows, src), end, self.output_cost[v][d], d != src)
                np.maximum(self.done[mv], back, out=self.done[mv])
        for mv in range(cost.models):
            members = np.flatnonzero(cost.model == mv)
            if len(members):
                np.maximum(self.done[mv], finish[members].max(axis=0), out=self.done[mv])
        return self.done.T.copy()

    def run_sequences(self, sequence: np.ndarray) -> np.ndarray:
        cost = self.cost
        n, size, rows = cost.tasks, self.endpoints, self.rows
        everyone = np.arange(rows)
        width = max((len(p) for p in cost.preds), default=0)
        pred = np.full((n, max(width, 1)), n, dtype=np.int64)  # n: the never-late producer
        pedge = np.zeros((n, max(width, 1)), dtype=np.int64)
        for task, pairs in enumerate(cost.preds):
            for slot, (u, e) in enumerate(pairs):
                pred[task, slot], pedge[task, slot] = u, e
        width = pred.shape[1]
        pred_flat, pedge_flat = pred.reshape(-1), pedge.reshape(-1)
        device_of = np.vstack([self.task_dev, np.zeros((1, rows), dtype=np.int64)]).reshape(-1)
        finish = self.finish.reshape(-1)  # flat views: one 1-D gather is cheaper than a 2-D one
        done = self.done.reshape(-1)
        edge_flat = self.edge_cost.reshape(-1)
        compute_flat = cost.compute_s.reshape(-1)
        input_flat, output_flat = self.input_cost.reshape(-1), self.output_cost.reshape(-1)
        has_input = cost.input_bytes > 0
        has_output = cost.output_bytes > 0
        zeros = np.zeros(rows)
        for step in range(n):
            v = sequence[:, step]
            at_v = v * rows + everyone
            d = device_of[at_v]
            ready = zeros
            wants = has_input[v]
            if wants.any():
                src = cost.source[cost.model[v]]
                arrival = self._queue(src, d, zeros, input_flat[v * cost.devices + d], wants & (d != src))
                ready = np.where(wants, arrival, 0.0)
            for slot in range(width):
                u = pred_flat[v * width + slot]
                real = u < n
                at_u = u * rows + everyone
                du = device_of[at_u]
                seconds = np.where(real, edge_flat[pedge_flat[v * width + slot] * size * size + du * size + d], 0.0)
                ready = np.maximum(ready, self._queue(du, d, finish[at_u], seconds, real & (du != d)))
            slot_idx = self.row_dev + d
            start = np.maximum(ready, self.device_free[slot_idx])
            end = start + compute_flat[v * cost.devices + d]
            finish[at_v] = end
            self.device_free[slot_idx] = end
            sends = has_output[v]
            if sends.any():
                mv = cost.model[v]
                src = cost.source[mv]
                back = self._queue(d, src, end, output_flat[v * cost.devices + d], sends & (d != src))
                at_model = mv * rows + everyone
                done[at_model] = np.maximum(done[at_model], np.where(sends, back, 0.0))
        for mv in range(cost.models):
            members = np.flatnonzero(cost.model == mv)
            if len(members):
                np.maximum(self.done[mv], self.finish[members].max(axis=0), out=self.done[mv])
        return self.done.T.copy()


def _message_costs(cost: CostGraph, nbytes: np.ndarray, to_source: bool) -> np.ndarray:
    """(n, m): seconds to move each task's `nbytes` between its model's source and each device."""
    src = cost.source[cost.model]  # (n,)
    m = cost.devices
    if to_source:
        alpha = cost.alpha_s[:m, :][:, src].T  # device -> source
        per_byte = cost.s_per_byte[:m, :][:, src].T
    else:
        alpha = cost.alpha_s[src, :m]
        per_byte = cost.s_per_byte[src, :m]
    return np.where(nbytes[:, None] > 0, alpha + nbytes[:, None] * per_byte, 0.0)
