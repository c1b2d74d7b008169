"""brute-force: exhaustive search for small instances, the oracle of the tests (SOLVERS.md §9).

Two spaces:

- `fused` (fused-dp's space): every segmentation of the units into stages,
  every option for every segment (a single device, or one of the split
  options of `Problem.split_options`);
- `pipeline` (pipeline-dp's space): every ordered choice of distinct devices
  and every way to cut the units among them.

Every complete plan is costed by the reference evaluator from the exact
geometry (`part_work`, not the searches' O(1) strip costs) and checked for
memory per device over the whole plan. Exponential: `max_plans` guards it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from edgepart.geometry import Region
from edgepart.plan import Objective, Stage, StagedPlan, make_plan
from edgepart.planner.errors import PlanningError
from edgepart.planner.problem import DeviceSets, Problem, SplitOption, used_devices
from edgepart.planner.segments import strip_region
from edgepart.planner.stage_costs import PartWork, evaluate_works, part_work, partition_memory


@dataclass(frozen=True)
class _Option:
    start: int  # unit
    stop: int
    single: int | None  # device index for a single stage
    split: SplitOption | None
    works: tuple[PartWork, ...]
    memory: tuple[tuple[str, int], ...]


def _single(problem: Problem, d: int, i: int, j: int) -> _Option:
    start, stop = problem.bounds[i], problem.bounds[j]
    region = Region.full(problem.graph.shape_at(stop))
    name = problem.names[d]
    work = part_work(problem.graph, problem.cluster, start, stop, name, region)
    return _Option(i, j, d, None, (work,), ((name, partition_memory(problem.graph, start, stop, region)),))


def _split(problem: Problem, option: SplitOption) -> _Option:
    start, stop = problem.bounds[option.i], problem.bounds[option.j]
    works, memory = [], []
    for device, (a, b) in option.parts:
        if option.split == "rows":
            region = strip_region(problem.graph, stop, a, b)
        else:
            region = problem.channel_region(option.i, a, b)
        works.append(part_work(problem.graph, problem.cluster, start, stop, device, region))
        memory.append((device, partition_memory(problem.graph, start, stop, region)))
    return _Option(option.i, option.j, None, option, tuple(works), tuple(memory))


def _fits(problem: Problem, chosen: Sequence[_Option]) -> bool:
    use: dict[str, int] = {}
    for option in chosen:
        for device, need in option.memory:
            use[device] = use.get(device, 0) + need
    return all(need <= problem.cluster.device(d).memory_bytes for d, need in use.items())


def _count(options: Sequence[Sequence[_Option]], n_units: int) -> int:
    ways = [0] * (n_units + 1)
    ways[n_units] = 1
    for b in range(n_units - 1, -1, -1):
        ways[b] = sum(ways[o.stop] for o in options[b])
    return ways[0]


def _sequences(options: Sequence[Sequence[_Option]], n_units: int) -> Iterator[list[_Option]]:
    chosen: list[_Option] = []

    def walk(b: int) -> Iterator[list[_Option]]:
        if b == n_units:
            yield chosen
            return
        for option in options[b]:
            chosen.append(option)
            yield from walk(option.stop)
            chosen.pop()

    yield from walk(0)


def _pipelines(problem: Problem, cache: dict[tuple[int, int, int], _Option]) -> Iterator[list[_Option]]:
    n_units, n = problem.L, len(problem.names)
    chosen: list[_Option] = []
    used: set[int] = set()

    def walk(b: int) -> Iterator[list[_Option]]:
        if b == n_units:
            yield chosen
            return
        for d in range(n):
            if d in used:
                continue
            for j in range(b + 1, n_units + 1):
                key = (d, b, j)
                if key not in cache:
                    cache[key] = _single(problem, d, b, j)
                chosen.append(cache[key])
                used.add(d)
                yield from walk(j)
                used.discard(d)
                chosen.pop()

    yield from walk(0)


def _better(objective: Objective, latency: float, throughput: float, best: tuple[float, float] | None) -> bool:
    if best is None:
        return True
    if objective == "latency":
        return (latency, -throughput) < (best[0], -best[1])
    return (-throughput, latency) < (-best[1], best[0])


def solve_brute_force(problem: Problem, objective: Objective = "latency", *, space: str | None = None,
                      device_sets: DeviceSets = "prefix", max_fused: int | None = None, layerwise: bool = True,
                      max_plans: int = 200_000) -> StagedPlan:
    space = space or ("fused" if objective == "latency" else "pipeline")
    if space not in ("fused", "pipeline"):
        raise PlanningError(f"brute-force: space must be 'fused' or 'pipeline', got {space!r}")
    n_units = problem.L
    if space == "fused":
        options: list[list[_Option]] = []
        for i in range(n_units):
            here = [_single(problem, d, i, j) for d in range(len(problem.names)) for j in range(i + 1, n_units + 1)]
            here += [_split(problem, o) for o in problem.split_options(i, device_sets, max_fused, layerwise)]
            options.append(here)
        total = _count(options, n_units)
        if total > max_plans:
            raise PlanningError(f"brute-force: {total} plans exceed max_plans={max_plans}; use a smaller model "
                                "or cluster, or fused-dp")
        candidates: Iterator[list[_Option]] = _sequences(options, n_units)
    else:
        n = len(problem.names)
        total = sum(math.perm(n, k) * math.comb(n_units - 1, k - 1) for k in range(1, min(n, n_units) + 1))
        if total > max_plans:
            raise PlanningError(f"brute-force: {total} pipelines exceed max_plans={max_plans}")
        candidates = _pipelines(problem, {})
    best: tuple[float, float] | None = None
    best_plan: list[_Option] | None = None
    for chosen in candidates:
        if not _fits(problem, chosen):
            continue
        result = evaluate_works([o.works for o in chosen], problem.cluster)
        if _better(objective, result.latency_s, result.throughput_per_s, best):
            best = (result.latency_s, result.throughput_per_s)
            best_plan = list(chosen)
    if best_plan is None or best is None:
        raise PlanningError(f"brute-force: no plan in the {space} space fits the devices' memory")
    stages: list[Stage] = []
    for option in best_plan:
        if option.single is not None:
            stages.append(problem.single_stage(len(stages), option.start, option.stop, option.single))
        else:
            assert option.split is not None
            stages.append(problem.split_stage(len(stages), option.split))
    meta = {"master": problem.master, "space": space, "plans": total, "search_latency_s": best[0],
            "search_throughput_per_s": best[1]}
    return make_plan(problem.model, "brute-force", objective, used_devices(problem.cluster, stages),
                     tuple(stages), meta=meta)
