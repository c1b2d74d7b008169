"""fused-dp: HotEdge/AOFL's memoised search over single / layer-wise / fused segments (SOLVERS.md §4 C.1).

The model is cut into segments of whole units; each segment runs either on one
device, or split across a device set by output channels (one conv/fc unit) or
by row strips (one unit = layer-wise rows, several = a fused block, B.2). The
latency of a plan is the sum of its stage times (A.3), and a stage's time
depends only on the holders at its two ends (see `evaluate.py`: the master,
or the device of a following single stage). So the dynamic program

    F[b][h] = min over stages s starting at boundary b that may read from
              holder h, and over the holder h' at its end:
              time(s | h, h') + F[end(s)][h']

with F[n_units][master] = 0 is exact for the evaluator [R: the holder in the
state is our extension of C.1's "next layer index" state, needed because a
single stage on a non-master device receives its input directly]. At an
interior boundary a holder h ≠ master admits only a single stage on h; the
master admits split stages and a single stage on the master.

Options: device_sets "prefix" (the k fastest devices for each segment, k =
2..N, default) or "subsets" (all 2^N - N - 1 sets, exact over sets, for N <=
8); max_fused = F_max, the most units in one fused block; layerwise = False
drops the single-unit row and channel splits.

[R] Memory is checked per partition during the search; a device holding
partitions of several stages is checked on the whole plan afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgepart.plan import Objective, Stage, StagedPlan, make_plan
from edgepart.planner.errors import PlanningError
from edgepart.planner.problem import DeviceSets, Problem, SplitOption, used_devices


@dataclass(frozen=True)
class _Single:
    device: int
    stop: int


_Choice = tuple[_Single | SplitOption, int]  # (stage, holder index at its end)


def solve_fused_dp(problem: Problem, objective: Objective = "latency", *, device_sets: DeviceSets = "prefix",
                   max_fused: int | None = None, layerwise: bool = True) -> StagedPlan:
    if device_sets not in ("prefix", "subsets"):
        raise PlanningError(f"fused-dp: device_sets must be 'prefix' or 'subsets', got {device_sets!r}")
    if max_fused is not None and max_fused < 1:
        raise PlanningError(f"fused-dp: max_fused must be at least 1, got {max_fused}")
    n_dev = len(problem.names)
    if device_sets == "subsets" and n_dev > 12:
        raise PlanningError(f"fused-dp: device_sets='subsets' enumerates 2^{n_dev} sets; use 'prefix' "
                            "for more than 12 devices")
    value, choice = _search(problem, device_sets, max_fused, layerwise)
    m = problem.master_index
    if not math.isfinite(value[0][m]):
        raise PlanningError(_infeasible_reason(problem))
    chosen: list[tuple[int, _Single | SplitOption]] = []
    b, h = 0, m
    while b < problem.L:
        stage, h = choice[(b, h)]
        if chosen and isinstance(stage, _Single) and isinstance(chosen[-1][1], _Single) \
                and chosen[-1][1].device == stage.device:
            chosen[-1] = (chosen[-1][0], stage)  # a tie: one stage instead of two on the same device
        else:
            chosen.append((b, stage))
        b = stage.stop if isinstance(stage, _Single) else stage.j
    stages: list[Stage] = []
    for start, stage in chosen:
        if isinstance(stage, _Single):
            stages.append(problem.single_stage(len(stages), start, stage.stop, stage.device))
        else:
            stages.append(problem.split_stage(len(stages), stage))
    meta = {"master": problem.master, "device_sets": device_sets, "max_fused": max_fused,
            "layerwise": layerwise, "search_latency_s": value[0][m]}
    return make_plan(problem.model, "fused-dp", objective, used_devices(problem.cluster, stages),
                     tuple(stages), meta=meta)


def _search(problem: Problem, device_sets: DeviceSets, max_fused: int | None,
            layerwise: bool) -> tuple[list[list[float]], dict[tuple[int, int], _Choice]]:
    n_units, names, cluster = problem.L, problem.names, problem.cluster
    n_dev, m = len(names), problem.master_index
    inf = math.inf
    value = [[inf] * n_dev for _ in range(n_units + 1)]
    value[n_units][m] = 0.0
    choice: dict[tuple[int, int], _Choice] = {}
    out_bytes = problem.boundary_bytes
    tx = [[cluster.link(u, v) for v in names] for u in names]
    local = [cluster.local_s(name) for name in names]
    for b in range(n_units - 1, -1, -1):
        splits = problem.split_options(b, device_sets, max_fused, layerwise)
        holders = [m] if b == 0 else range(n_dev)
        for h in holders:
            best: float = inf
            arg: _Choice | None = None
            for d in (range(n_dev) if b == 0 else (h,)):
                for j in range(n_units, b, -1):  # longest first: on ties, fewer stages
                    if not problem.fits_single(d, b, j):
                        continue
                    # at b = 0 the master scatters the input; inside, the previous stage sent it to d
                    t_in = tx[m][d].time(problem.single_in_bytes(b, j)) if b == 0 else 0.0
                    base = t_in + problem.single_compute(d, b, j)
                    if base >= best:
                        continue
                    row = value[j]
                    for h2 in ((m,) if j == n_units else range(n_dev)):
                        rest = row[h2]
                        if rest == inf:
                            continue
                        if d == h2:  # to the next stage's process on d (or the gateway): a local message
                            hop = local[d] if out_bytes[j] > 0 else 0.0
                        else:
                            hop = tx[d][h2].time(out_bytes[j])
                        total = base + hop + rest
                        if total < best:
                            best, arg = total, (_Single(d, j), h2)
            if b == 0 or h == m:
                for option in splits:
                    row = value[option.j]
                    for h2 in ((m,) if option.j == n_units else range(n_dev)):
                        total = option.times[h2] + row[h2]
                        if total < best:
                            best, arg = total, (option, h2)
            value[b][h] = best
            if arg is not None:
                choice[(b, h)] = arg
    return value, choice


def _infeasible_reason(problem: Problem) -> str:
    worst = max(range(problem.L), key=lambda i: problem.single_memory(i, i + 1))
    need = problem.single_memory(worst, worst + 1)
    biggest = max(problem.cluster.devices, key=lambda d: d.memory_bytes)
    return (f"fused-dp: no plan fits the devices' memory; unit {problem.units[worst].name!r} alone needs "
            f"{need / 2**20:.1f} MiB and the largest device ({biggest.name}) has "
            f"{biggest.memory_bytes / 2**20:.1f} MiB")
