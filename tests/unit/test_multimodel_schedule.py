"""The list-scheduling fitness against a plain one-row reference, and hand-computed cases."""

from __future__ import annotations

import heapq
import random

import numpy as np
import pytest
from multimodel_fakes import traced

from edgepart.planner.cluster import Cluster
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel import (
    Platform,
    completion_times,
    cost_graph,
    piecewise_dag,
    task_graph,
)
from edgepart.planner.multimodel.platform import Medium
from edgepart.planner.multimodel.schedule import LinkModel, decode_orders
from edgepart.planner.multimodel.tasks import CostGraph
from edgepart.planner.stage_costs import part_work


def random_cost(seed: int, medium: Medium = "switched", outputs: bool = True) -> CostGraph:
    """Two models of random DAGs on 3 devices; endpoint 3 only holds inputs."""
    rng = random.Random(seed)
    n, m, size = 12, 3, 4
    model = [0] * 6 + [1] * 6
    edges = [(u, v) for v in range(n) for u in range(v) if model[u] == model[v] and rng.random() < 0.35]
    has_pred = {v for _, v in edges}
    has_succ = {u for u, _ in edges}
    alpha = np.array([[0.0 if i == j else rng.uniform(0.001, 0.01) for j in range(size)] for i in range(size)])
    per_byte = np.array([[rng.uniform(1e-7, 1e-6) for _ in range(size)] for _ in range(size)])
    return CostGraph(
        compute_s=np.array([[rng.uniform(0.01, 0.2) for _ in range(m)] for _ in range(n)]),
        memory_bytes=np.ones(n), capacity_bytes=np.full(m, 100.0),
        block=np.arange(n), blocks=n, model=np.array(model), models=2,
        edge_src=np.array([u for u, _ in edges], dtype=np.int64), edge_dst=np.array([v for _, v in edges], dtype=np.int64),
        edge_bytes=np.array([rng.uniform(1e3, 1e5) for _ in edges]),
        input_bytes=np.array([0.0 if v in has_pred else rng.uniform(1e3, 1e5) for v in range(n)]),
        output_bytes=np.array([rng.uniform(1e3, 1e4) if outputs and v not in has_succ else 0.0 for v in range(n)]),
        source=np.array([3, 0]), alpha_s=alpha, s_per_byte=per_byte, medium=medium,
        order=np.array(sorted(range(n), key=lambda v: (model[v], v))), fallback=2,
        device_names=("a", "b", "c"),
    )


def reference(cost: CostGraph, devices: list[int], fifo: bool, order: list[int]) -> list[float]:
    """One row, plain Python: the rules of schedule.py's docstring."""
    size = cost.alpha_s.shape[0]
    send, recv, medium = [0.0] * size, [0.0] * size, [0.0]

    def message(s: int, r: int, ready: float, nbytes: float) -> float:
        seconds = cost.alpha_s[s, r] + nbytes * cost.s_per_byte[s, r]
        if not fifo or s == r:
            return ready + seconds
        if cost.medium == "shared":
            start = max(ready, medium[0])
            medium[0] = start + seconds
        else:
            start = max(ready, send[s], recv[r])
            send[s] = recv[r] = start + seconds
        return start + seconds

    finish = [0.0] * cost.tasks
    free = [0.0] * cost.devices
    done = [0.0] * cost.models
    for v in order:
        d = devices[v]
        src = int(cost.source[cost.model[v]])
        ready = message(src, d, 0.0, cost.input_bytes[v]) if cost.input_bytes[v] > 0 else 0.0
        for u, e in cost.preds[v]:
            ready = max(ready, message(devices[u], d, finish[u], cost.edge_bytes[e]))
        finish[v] = max(ready, free[d]) + cost.compute_s[v, d]
        free[d] = finish[v]
        end = finish[v]
        if cost.output_bytes[v] > 0:
            end = message(d, src, end, cost.output_bytes[v])
        done[cost.model[v]] = max(done[cost.model[v]], end)
    return done


def reference_order(cost: CostGraph, priority: list[float]) -> list[int]:
    indeg = [0] * cost.tasks
    for v in cost.edge_dst.tolist():
        indeg[v] += 1
    ready = [(priority[v], v) for v in range(cost.tasks) if indeg[v] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, v = heapq.heappop(ready)
        order.append(v)
        for x in cost.succs[v]:
            indeg[x] -= 1
            if indeg[x] == 0:
                heapq.heappush(ready, (priority[x], x))
    return order


@pytest.mark.parametrize("medium", ["switched", "shared"])
@pytest.mark.parametrize("links", ["free", "fifo"])
def test_many_rows_at_once_match_the_one_row_reference(links: LinkModel, medium: Medium) -> None:
    for seed in range(6):
        cost = random_cost(seed, medium, outputs=seed % 2 == 0)
        rng = np.random.default_rng(seed)
        rows = rng.integers(cost.devices, size=(16, cost.tasks))
        got = completion_times(cost, rows, links)
        for row, values in zip(rows.tolist(), got, strict=True):
            want = reference(cost, row, links == "fifo", cost.order.tolist())
            assert values.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("links", ["free", "fifo"])
def test_per_row_priorities_take_the_ready_task_of_lowest_priority(links: LinkModel) -> None:
    for seed in range(4):
        cost = random_cost(seed)
        rng = np.random.default_rng(seed)
        rows = rng.integers(cost.devices, size=(10, cost.tasks))
        priorities = np.argsort(rng.random((10, cost.tasks)), axis=1)
        orders = decode_orders(cost, priorities.astype(float))
        got = completion_times(cost, rows, links, priorities)
        for row, priority, order, values in zip(rows.tolist(), priorities.tolist(), orders.tolist(), got, strict=True):
            assert order == reference_order(cost, priority)
            assert values.tolist() == pytest.approx(reference(cost, row, links == "fifo", order), rel=1e-12)


def test_a_hand_computed_chain_and_a_contended_nic() -> None:
    # two models of one task each, both read 1000 B from endpoint 2; devices 0 and 1
    cost = CostGraph(
        compute_s=np.array([[1.0, 2.0], [1.0, 2.0]]), memory_bytes=np.ones(2), capacity_bytes=np.ones(2) * 9,
        block=np.arange(2), blocks=2, model=np.array([0, 1]), models=2,
        edge_src=np.zeros(0, dtype=np.int64), edge_dst=np.zeros(0, dtype=np.int64), edge_bytes=np.zeros(0),
        input_bytes=np.array([1000.0, 1000.0]), output_bytes=np.zeros(2), source=np.array([2, 2]),
        alpha_s=np.zeros((3, 3)), s_per_byte=np.full((3, 3), 1e-3), medium="switched",
        order=np.array([0, 1]), fallback=0, device_names=("a", "b"))
    # both on device 0: inputs arrive at 1 s each (free links), compute 1 s each, one after the other
    assert completion_times(cost, np.array([[0, 0]]), "free").tolist() == [[2.0, 3.0]]
    # on different devices the camera's NIC sends one input after the other: 1 s, then 2 s
    assert completion_times(cost, np.array([[0, 1]]), "free").tolist() == [[2.0, 3.0]]
    assert completion_times(cost, np.array([[0, 1]]), "fifo").tolist() == [[2.0, 4.0]]


def test_bad_assignments_are_refused_with_the_reason() -> None:
    cost = random_cost(0)
    with pytest.raises(PlanningError, match="tasks"):
        completion_times(cost, np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(PlanningError, match="device indices"):
        completion_times(cost, np.full((1, cost.tasks), 7))
    with pytest.raises(PlanningError, match="links"):
        completion_times(cost, np.zeros((1, cost.tasks), dtype=np.int64), "wifi")  # type: ignore[arg-type]


def test_profiled_devices_cost_tasks_as_the_evaluator_costs_partitions() -> None:
    _, graph = traced("net-b")
    cluster = Cluster.homogeneous(2, speed=0.5).with_device(
        Cluster.homogeneous(1, speed=2.0, prefix="fast").devices[0])
    platform = Platform.of_cluster(cluster)
    assert platform.names[platform.fallback] == "fast0"
    dag = piecewise_dag([graph], K=3)
    tasks = task_graph(dag, [p.piece for p in dag.pieces])  # stripes per piece index
    cost = cost_graph(tasks, platform, [0])
    for task in tasks.tasks:
        for d, name in enumerate(cluster.names):
            work = part_work(graph, cluster, task.start, task.stop, name, task.output)
            assert cost.compute_s[task.index, d] == pytest.approx(work.compute_s, rel=1e-12)
    # a message between two devices costs the cluster's link; inside one device its local message time
    assert cost.alpha_s[0, 1] == pytest.approx(cluster.link("dev0", "dev1").alpha_s)
    assert cost.alpha_s[1, 1] == pytest.approx(cluster.local_s("dev1"))
