"""pipeline-dp: PipeEdge's bottleneck DP for pipelined throughput (SOLVERS.md §4 C.2).

Stages are contiguous unit ranges, each on one device, on distinct devices,
each within its device's memory. Stage k on u_k sends its output straight to
u_{k+1}; the master sends the input to u_1 and receives the output from the
last device (the evaluator's routing). Throughput is 1 / the busiest
resource's time per request (C.0, communication overlapped with compute).

State: (next unit i, devices used so far, the device that runs the stage
starting at i). Two refinements keep the DP exact for the evaluator:

- [R] The master's NIC directions may carry two transfers (the input it
  sends to u_1 and, if it also runs a stage, that stage's output; likewise
  for what it receives), and a shared medium carries every transfer. These
  loads are summed, not maxed, so each state keeps a Pareto set of
  (max of the closed resources, master send, master receive or medium,
  latency) instead of one number; latency breaks ties.
- [C] As in PipeEdge's `schedule.cpp`, devices that are interchangeable
  (same cost model, memory and links) are one *type*, and the used set is a
  vector of counts per type: O(L² · Π(c_t + 1) · T²) instead of O(L² 2^N N²).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgepart.plan import Objective, Stage, StagedPlan, make_plan
from edgepart.planner.cluster import Cluster
from edgepart.planner.errors import PlanningError
from edgepart.planner.problem import Problem, used_devices

Value = tuple[float, float, float, float]  # (closed bottleneck, master send / medium, master recv, latency)


@dataclass(frozen=True)
class _Step:
    prev: tuple[int, tuple[int, ...], int] | None  # previous state (i, counts, type)
    prev_value: Value | None
    stop: int  # this stage covers units [state.i, stop)


def device_types(cluster: Cluster) -> list[list[int]]:
    """Groups of interchangeable device indices; the master and devices with per-pair link
    overrides among themselves each form their own group."""
    master = cluster.master
    special = {u for (u, v) in cluster.overrides if master not in (u, v)} | \
              {v for (u, v) in cluster.overrides if master not in (u, v)}
    groups: dict[object, list[int]] = {}
    for index, device in enumerate(cluster.devices):
        name = device.name
        if name == master or name in special:
            key: object = ("unique", name)
        else:
            key = (device.cost_key, device.message_s, device.memory_bytes, cluster.link(master, name),
                   cluster.link(name, master))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def _pareto_insert(front: list[Value], value: Value) -> bool:
    """Insert unless dominated; drop what it dominates. True when inserted."""
    for other in front:
        if all(o <= v for o, v in zip(other, value, strict=True)):
            return False
    front[:] = [o for o in front if not all(v <= x for v, x in zip(value, o, strict=True))]
    front.append(value)
    return True


def solve_pipeline_dp(problem: Problem, objective: Objective = "throughput", *,
                      max_states: int = 2_000_000) -> StagedPlan:
    """Best pipeline by (bottleneck, latency) for throughput, or (latency, bottleneck) for latency."""
    cluster = problem.cluster
    types = device_types(cluster)
    caps = tuple(len(t) for t in types)
    count_states = math.prod(c + 1 for c in caps)
    n_units = problem.L
    if count_states * n_units * len(types) > max_states:
        raise PlanningError(f"pipeline-dp: {len(types)} kinds of devices give {count_states} device-count states "
                            f"(more than max_states={max_states} with {n_units} units); group identical devices or "
                            "use fused-dp")
    shared = cluster.medium == "shared"
    master = cluster.master
    rep = [t[0] for t in types]  # a representative device per type
    master_type = next(k for k, t in enumerate(types) if problem.master_index in t)
    names = problem.names
    out = problem.boundary_bytes

    def link_time(tu: int, tv: int, nbytes: float) -> float:
        u = names[types[tu][0]]
        v = names[types[tv][0] if tv != tu else types[tv][1]]  # same type: two different devices
        return cluster.tx(u, v, nbytes)

    def key(value: Value) -> tuple[float, float]:
        bottleneck = max(value[0], value[1], value[2])
        return (bottleneck, value[3]) if objective == "throughput" else (value[3], bottleneck)

    fronts: dict[tuple[int, tuple[int, ...], int], list[Value]] = {}
    steps: dict[tuple[tuple[int, tuple[int, ...], int], Value], _Step] = {}
    zero = tuple(0 for _ in types)
    for t in range(len(types)):
        state = (0, zero, t)
        fronts[state] = [(0.0, 0.0, 0.0, 0.0)]
        steps[(state, fronts[state][0])] = _Step(None, None, 0)
    best: tuple[tuple[float, float], tuple[int, tuple[int, ...], int], Value, int, Value] | None = None
    # process states in order of i, then anything (stages only move forward)
    for i in range(n_units):
        for state in [s for s in fronts if s[0] == i]:
            _, counts, t = state
            used = list(counts)
            used[t] += 1
            used_t = tuple(used)
            d = rep[t]
            for start_value in list(fronts[state]):
                if best is not None and key(start_value) > best[0]:
                    continue  # [R] bound: every resource's load and the latency only grow
                for j in range(n_units, i, -1):  # the whole rest first: an early incumbent prunes more
                    if not problem.fits_single(d, i, j):
                        continue
                    comp = problem.single_compute(d, i, j)
                    value = start_value
                    if i == 0 and t != master_type:
                        # the master sends the input (what units [0, j) read) to the first device:
                        # its send queue (or the medium) and the device's receive queue
                        t0 = cluster.tx(master, names[d], problem.single_in_bytes(0, j))
                        value = ((value[0] if shared else max(value[0], t0)), value[1] + t0, value[2],
                                 value[3] + t0)
                    if j == n_units:
                        tx = 0.0 if t == master_type else cluster.tx(names[d], master, out[n_units])
                        # on the master the output still goes to the gateway's process: latency, not a queue
                        hand_off = cluster.local_s(master) if t == master_type and out[n_units] > 0 else 0.0
                        closed = max(value[0], comp)
                        send, recv = value[1], value[2]
                        if shared:
                            send += tx
                        else:
                            if t != master_type:
                                closed = max(closed, tx)  # t's send queue closes here
                            recv += tx
                        final: Value = (closed, send, recv, value[3] + comp + tx + hand_off)
                        if best is None or key(final) < best[0]:
                            best = (key(final), state, start_value, j, final)
                        continue
                    for t2 in range(len(types)):
                        if used_t[t2] >= caps[t2]:
                            continue
                        tx = link_time(t, t2, out[j])
                        closed = max(value[0], comp)
                        send, recv = value[1], value[2]
                        if shared:
                            send += tx
                        else:
                            if t == master_type:
                                send += tx
                            else:
                                closed = max(closed, tx)
                            if t2 == master_type:
                                recv += tx
                            else:
                                closed = max(closed, tx)
                        new: Value = (closed, send, recv, value[3] + comp + tx)
                        if best is not None and key(new) > best[0]:
                            continue
                        target = (j, used_t, t2)
                        front = fronts.setdefault(target, [])
                        if _pareto_insert(front, new):
                            steps[(target, new)] = _Step(state, start_value, j)
    if best is None:
        raise PlanningError(_no_pipeline(problem))
    return _rebuild(problem, objective, types, best[1], best[2], best[3], best[4], steps)


def _rebuild(problem: Problem, objective: Objective, types: Sequence[Sequence[int]],
             state: tuple[int, tuple[int, ...], int], value: Value, stop: int, final: Value,
             steps: dict[tuple[tuple[int, tuple[int, ...], int], Value], _Step]) -> StagedPlan:
    chain: list[tuple[int, int, int]] = []  # (type, start unit, stop unit)
    current: tuple[int, tuple[int, ...], int] | None = state
    current_value: Value | None = value
    end = stop
    while current is not None:
        assert current_value is not None
        i, _, t = current
        chain.append((t, i, end))
        step = steps[(current, current_value)]
        end = i
        current, current_value = step.prev, step.prev_value
    chain.reverse()
    taken = {k: 0 for k in range(len(types))}
    stages: list[Stage] = []
    for t, i, j in chain:
        d = types[t][taken[t]]
        taken[t] += 1
        stages.append(problem.single_stage(len(stages), i, j, d))
    meta = {"master": problem.master, "search_bottleneck_s": max(final[0], final[1], final[2]),
            "search_latency_s": final[3]}
    return make_plan(problem.model, "pipeline-dp", objective, used_devices(problem.cluster, stages),
                     tuple(stages), meta=meta)


def _no_pipeline(problem: Problem) -> str:
    for i in range(problem.L):
        if not any(problem.fits_single(d, i, i + 1) for d in range(len(problem.names))):
            need = problem.single_memory(i, i + 1)
            biggest = max(problem.cluster.devices, key=lambda d: d.memory_bytes)
            return (f"pipeline-dp: unit {problem.units[i].name!r} needs {need / 2**20:.1f} MiB and no device "
                    f"has that much (largest: {biggest.name}, {biggest.memory_bytes / 2**20:.1f} MiB)")
    return (f"pipeline-dp: the model's {problem.L} units do not fit on {len(problem.names)} distinct devices "
            "within their memory")
