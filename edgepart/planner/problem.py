"""What every search shares: units, per-device costs, memory, and the split options of §3 B.2-B.4.

A `Problem` is a graph and a cluster plus caches. Searches work at *unit*
granularity (`graph.units`: conv+bn+act is one unit, a residual block is one
unit), so a stage always spans units [i, j), i.e. layers
[bounds[i], bounds[j]).

Split options (`SplitOption`) are the stages with several partitions:
row strips over a fusable unit range (a fused block, or a layer-wise row split
when it is one unit) and output-channel splits of one conv/fc unit. Their
shares come from `balance` (B.3): speed-proportional, then a binary search on
the makespan with a greedy that respects the master's FIFO send queue. The
same generator feeds fused-dp and brute-force, so the two search the same
space and a mismatch can only come from the search itself.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgepart.geometry import Region, TileGeometry, backprop, split_interval
from edgepart.graph.layer_graph import LayerGraph, Unit
from edgepart.graph.loader import ModelRef
from edgepart.plan import SplitKind, Stage, StageKind
from edgepart.planner.builders import channel_splittable, make_stage
from edgepart.planner.cluster import Cluster, Device
from edgepart.planner.costmodel import DeviceProfile
from edgepart.planner.segments import EndCosts, RowMaps, SegmentCost, strip_region
from edgepart.planner.stage_costs import (
    PartWork,
    dtype_at,
    part_work,
    partition_memory,
    stage_times,
)

DeviceSets = str  # "prefix" | "subsets"


# ------------------------------------------------------------------ balancing (B.3)


@dataclass
class Lane:
    """One device's cost of taking blocks [a, b) of a split axis of n blocks.

    total(a, b) = k + u[b] - v[a] is its own time: input transfer, compute and
    output transfer, ignoring queueing; tin(a, b) its input transfer alone.
    `slow` replaces both when the costs are not affine.
    """

    device: str
    on_hub: bool  # the master: no transfers, no place in the send queue
    k: float
    u: list[float]  # index b (u[0] unused)
    v: list[float]  # index a
    kin: float = 0.0
    uin: list[float] | None = None
    vin: list[float] | None = None
    slow: Callable[[int, int], tuple[float, float]] | None = None

    def total(self, a: int, b: int) -> float:
        if self.slow is not None:
            return self.slow(a, b)[0]
        return self.k + self.u[b] - self.v[a]

    def t_in(self, a: int, b: int) -> float:
        if self.on_hub:
            return 0.0
        if self.slow is not None:
            return self.slow(a, b)[1]
        assert self.uin is not None and self.vin is not None
        return self.kin + self.uin[b] - self.vin[a]

    def largest(self, a: int, n: int, budget: float) -> int:
        """Largest b in (a, n] with total(a, b) <= budget, or a when there is none."""
        if self.slow is None:
            return bisect.bisect_right(self.u, budget - self.k + self.v[a], a + 1, n + 1) - 1
        lo, hi = a, n  # total is non-decreasing in b
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.total(a, mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo


Assignment = list[tuple[int, int, int]]  # (lane index, a, b)


def _greedy(lanes: Sequence[Lane], n: int, limit: float) -> Assignment | None:
    a = 0
    queue = 0.0  # when the master's send queue frees up
    result: Assignment = []
    for index, lane in enumerate(lanes):
        if a >= n:
            break
        b = lane.largest(a, n, limit - (0.0 if lane.on_hub else queue))
        if b <= a:
            continue  # this device cannot help within the limit: dropped
        result.append((index, a, b))
        queue += lane.t_in(a, b)
        a = b
    return result if a >= n else None


def _finish(lanes: Sequence[Lane], parts: Assignment) -> float:
    queue = 0.0
    worst = 0.0
    for index, a, b in parts:
        lane = lanes[index]
        worst = max(worst, lane.total(a, b) + (0.0 if lane.on_hub else queue))
        queue += lane.t_in(a, b)
    return worst


def proportional(lanes: Sequence[Lane], n: int) -> Assignment:
    """Shares by speed, w = 1 / (time of the whole axis alone); devices below one block are dropped [S]."""
    weights = [1.0 / max(lane.total(0, n), 1e-15) for lane in lanes]
    keep = list(range(len(lanes)))
    while keep:
        total = sum(weights[i] for i in keep)
        small = [i for i in keep if n * weights[i] / total < 1.0]
        if not small:
            break
        keep.remove(min(small, key=lambda i: weights[i]))
    intervals = split_interval(n, [weights[i] for i in keep])
    return [(i, a, b) for i, (a, b) in zip(keep, intervals, strict=True)]


def balance(lanes: Sequence[Lane], n: int, rel_tol: float = 1e-4) -> tuple[Assignment, Assignment]:
    """(refined, proportional) assignments of n blocks to lanes in order (B.3).

    The refined one is the greedy at the smallest makespan limit it can meet,
    found by binary search to `rel_tol`.
    """
    prop = proportional(lanes, n)
    high = max(_finish(lanes, prop), 1e-12)
    refined = _greedy(lanes, n, high)
    for _ in range(200):  # the queue can make the proportional limit too tight for the greedy
        if refined is not None:
            break
        high *= 2
        refined = _greedy(lanes, n, high)
    if refined is None:  # unreachable with finite costs: the first lane alone meets a large enough limit
        raise ValueError("balance: no assignment meets any makespan limit")
    low = 0.0
    while high - low > rel_tol * high:
        mid = (low + high) / 2
        attempt = _greedy(lanes, n, mid)
        if attempt is None:
            low = mid
        else:
            high, refined = mid, attempt
    return refined, prop


# ------------------------------------------------------------------ options


@dataclass(frozen=True)
class SplitOption:
    """A stage over units [i, j) split across several devices, costed for every sink holder."""

    kind: StageKind
    split: SplitKind  # "rows" or "channels"
    i: int
    j: int
    parts: tuple[tuple[str, tuple[int, int]], ...]  # (device, [a, b) in rows or channels)
    works: tuple[PartWork, ...]
    times: tuple[float, ...]  # stage time per sink, indexed like cluster.names (the source is the master)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.parts)


@dataclass
class Problem:
    graph: LayerGraph
    cluster: Cluster
    model: ModelRef
    units: tuple[Unit, ...] = field(init=False)
    bounds: tuple[int, ...] = field(init=False)
    names: tuple[str, ...] = field(init=False)
    master_index: int = field(init=False)
    boundary_bytes: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.units = self.graph.units
        self.bounds = self.graph.unit_boundaries()
        self.names = self.cluster.names
        self.master_index = self.names.index(self.cluster.master)
        self.boundary_bytes = tuple(float(self.graph.bytes_at(p)) for p in self.bounds)
        self._profiles: dict[int, DeviceProfile] = {}
        for d in self.cluster.devices:
            self._profiles.setdefault(id(d.profile), d.profile)
        self._single_times: dict[tuple[int, int], list[float]] = {}
        self._geometries: dict[int, TileGeometry] = {}
        self._single_memory: dict[tuple[int, int], int] = {}
        self._maps: dict[int, RowMaps] = {}
        self._ends: dict[tuple[int, int], EndCosts] = {}
        self._seg: dict[tuple[int, int, int], SegmentCost] = {}
        self._channel_work: dict[tuple[int, int, int, int], PartWork] = {}
        self._channel_affine: dict[tuple[int, int], tuple[tuple[float, float], ...] | None] = {}
        self._lanes: dict[tuple[int, int, int], Lane] = {}
        self._row_bytes: dict[tuple[int, int], tuple[float, float]] = {}
        # cheap upper bounds for memory checks: weights prefix and the largest full working set
        layers = self.graph.layers
        weights = [0.0]
        for u in self.units:
            weights.append(weights[-1] + sum(layer.weight_bytes for layer in layers[u.start:u.stop]))
        self._weights_prefix = weights
        self._unit_peak = [max((sum(math.prod(s) for s in layer.in_shapes) + layer.out_elems)
                               * self.graph.batch * layer.dtype_bytes for layer in layers[u.start:u.stop])
                           for u in self.units]

    @property
    def L(self) -> int:  # noqa: N802 - the usual name
        return len(self.units)

    @property
    def master(self) -> str:
        return self.cluster.master

    def device(self, index: int) -> Device:
        return self.cluster.devices[index]

    # -------------------------------------------------------------- whole units on one device

    def single_compute(self, d: int, i: int, j: int) -> float:
        """Compute seconds of units [i, j) on device d producing their whole output.

        The layers compute what the exact geometry asks for, which can be less than
        their whole output (a stride-2 1x1 conv skips the last row of its input), so
        the times depend on where the range ends: one backprop per end, shared by
        every start.
        """
        device = self.cluster.devices[d]
        key = (j, id(device.profile))
        if key not in self._single_times:
            stop = self.bounds[j]
            regions = self._full_geometry(j).regions
            per_layer = [device.profile.layer_time(layer, regions.get(layer.index), self.graph.batch)
                         if layer.index in regions else 0.0 for layer in self.graph.layers[:stop]]
            suffix = [0.0] * (j + 1)
            for unit in range(j - 1, -1, -1):
                u = self.units[unit]
                suffix[unit] = suffix[unit + 1] + sum(per_layer[u.start:u.stop])
            self._single_times[key] = suffix
        return self._single_times[key][i] / device.speed

    def _full_geometry(self, j: int) -> TileGeometry:
        if j not in self._geometries:
            stop = self.bounds[j]
            self._geometries[j] = backprop(self.graph, 0, stop, Region.full(self.graph.shape_at(stop)))
        return self._geometries[j]

    def single_in_bytes(self, i: int, j: int) -> float:
        """Bytes units [i, j) read to produce their whole output (the geometry may need less than
        the whole input tensor, e.g. before a stride-2 1x1 conv)."""
        geometry = self._full_geometry(j)
        producer = self.graph.producer_at(self.bounds[i])
        region = geometry.input_region if i == 0 else geometry.regions[producer]
        return float(region.size * self.graph.batch * dtype_at(self.graph, self.bounds[i]))

    def memory_bound(self, i: int, j: int) -> float:
        """An upper bound of any partition of units [i, j) (full tensors, all weights)."""
        return (self._weights_prefix[j] - self._weights_prefix[i] + max(self._unit_peak[i:j])
                + self.boundary_bytes[i] + self.boundary_bytes[j] + 1)

    def single_memory(self, i: int, j: int) -> int:
        key = (i, j)
        if key not in self._single_memory:
            start, stop = self.bounds[i], self.bounds[j]
            self._single_memory[key] = partition_memory(self.graph, start, stop,
                                                        Region.full(self.graph.shape_at(stop)))
        return self._single_memory[key]

    def fits_single(self, d: int, i: int, j: int) -> bool:
        capacity = self.cluster.devices[d].memory_bytes
        return self.memory_bound(i, j) <= capacity or self.single_memory(i, j) <= capacity

    def single_work(self, d: int, i: int, j: int) -> PartWork:
        return PartWork(self.names[d], self.single_in_bytes(i, j), self.boundary_bytes[j],
                        self.single_compute(d, i, j))

    # -------------------------------------------------------------- fused strips

    def fusable(self, i: int, j: int) -> bool:
        start, stop = self.bounds[i], self.bounds[j]
        if not all(u.fusable for u in self.units[i:j]) or not self.graph.fusable(start, stop):
            return False
        shape = self.graph.shape_at(stop)
        return len(shape) == 3 and all(len(layer.out_shape) == 3 for layer in self.graph.layers[start:stop])

    def row_maps(self, j: int) -> RowMaps:
        """Maps from the end of unit j-1 back to the start of its fusable run."""
        if j not in self._maps:
            run = j - 1
            while run > 0 and self.fusable(run - 1, j):
                run -= 1
            self._maps[j] = RowMaps.build(self.graph, self.bounds[run], self.bounds[j])
        return self._maps[j]

    def segment_cost(self, i: int, j: int, profile: DeviceProfile) -> SegmentCost:
        key = (i, j, id(profile))
        if key not in self._seg:
            end_key = (j, id(profile))
            if end_key not in self._ends:
                maps = self.row_maps(j)
                starts = [b for b in self.bounds if maps.run_start <= b < maps.end]
                self._ends[end_key] = EndCosts(maps, profile, starts)
            self._seg[key] = self._ends[end_key].segment(self.bounds[i])
        return self._seg[key]

    def strip_lanes(self, i: int, j: int, devices: Sequence[int]) -> list[Lane]:
        missing = [d for d in devices if (i, j, d) not in self._lanes]
        if missing:
            for d, lane in zip(missing, self._build_strip_lanes(i, j, missing), strict=True):
                self._lanes[(i, j, d)] = lane
        return [self._lanes[(i, j, d)] for d in devices]

    def _build_strip_lanes(self, i: int, j: int, devices: Sequence[int]) -> list[Lane]:
        maps = self.row_maps(j)
        start = self.bounds[i]
        n = maps.rows
        in_row = maps.entry_row_bytes(start)
        out_row = maps.out_row_bytes()
        p = maps.entry(start)
        need_lo, need_hi = maps.need_lo[p], maps.need_hi[p]
        arange = np.arange(n + 1, dtype=float)
        lanes = []
        for d in devices:
            device = self.cluster.devices[d]
            cost = self.segment_cost(i, j, device.profile)
            on_hub = device.name == self.master
            to_dev = self.cluster.link(self.master, device.name)
            from_dev = self.cluster.link(device.name, self.master)
            if on_hub:
                cin = cout = alpha = 0.0
            else:
                cin = in_row / to_dev.bandwidth_Bps
                cout = out_row / from_dev.bandwidth_Bps
                alpha = to_dev.alpha_s + from_dev.alpha_s
            speed = device.speed
            u = np.empty(n + 1)
            u[0] = -math.inf
            u[1:] = cost.u / speed + cin * need_hi + cout * arange[1:]
            v = np.empty(n + 1)
            v[:n] = cost.v / speed + cin * need_lo + cout * arange[:n]
            v[n] = math.inf
            uin = np.empty(n + 1)
            uin[0] = 0.0
            uin[1:] = cin * need_hi
            vin = np.empty(n + 1)
            vin[:n] = cin * need_lo
            vin[n] = 0.0
            slow = None
            if not cost.exact:
                slow = self._slow_strip(cost, device, on_hub, in_row, out_row, maps, start)
            lanes.append(Lane(device.name, on_hub, cost.const / speed + alpha, u.tolist(), v.tolist(),
                              0.0 if on_hub else to_dev.alpha_s, uin.tolist(), vin.tolist(), slow))
        return lanes

    def _slow_strip(self, cost: SegmentCost, device: Device, on_hub: bool, in_row: float, out_row: float,
                    maps: RowMaps, start: int) -> Callable[[int, int], tuple[float, float]]:
        cluster, master = self.cluster, self.master

        def slow(a: int, b: int) -> tuple[float, float]:
            compute = cost.time(a, b) / device.speed
            if on_hub:
                return compute, 0.0
            lo, hi = maps.entry_rows(start, a, b)
            t_in = cluster.tx(master, device.name, in_row * (hi - lo))
            return t_in + compute + cluster.tx(device.name, master, out_row * (b - a)), t_in

        return slow

    def strip_work(self, i: int, j: int, d: int, a: int, b: int) -> PartWork:
        maps = self.row_maps(j)
        start = self.bounds[i]
        device = self.cluster.devices[d]
        compute = self.segment_cost(i, j, device.profile).time(a, b) / device.speed
        lo, hi = maps.entry_rows(start, a, b)
        if (i, j) not in self._row_bytes:
            self._row_bytes[(i, j)] = (maps.entry_row_bytes(start), maps.out_row_bytes())
        in_row, out_row = self._row_bytes[(i, j)]
        return PartWork(device.name, in_row * (hi - lo), out_row * (b - a), compute)

    def strip_memory(self, i: int, j: int, a: int, b: int) -> int:
        stop = self.bounds[j]
        return partition_memory(self.graph, self.bounds[i], stop, strip_region(self.graph, stop, a, b))

    # -------------------------------------------------------------- channel splits (B.4 lw_oc)

    def channel_step(self, i: int) -> tuple[int, int]:
        """(channels per block, blocks) of unit i's output channel split."""
        first = self.graph.layers[self.units[i].start]
        channels = self.graph.shape_at(self.bounds[i + 1])[0]
        step = 1
        if first.spec.groups > 1 and not (first.spec.groups == first.in_shapes[0][0] == channels):
            step = channels // first.spec.groups
        return step, channels // step

    def channel_region(self, i: int, a: int, b: int) -> Region:
        step, _ = self.channel_step(i)
        shape = self.graph.shape_at(self.bounds[i + 1])
        return Region(((a * step, b * step), *((0, n) for n in shape[1:])))

    def channel_work(self, i: int, d: int, a: int, b: int) -> PartWork:
        """Bytes and compute of output-channel blocks [a, b) of unit i on device d.

        Every count is affine in the number of blocks (a channel slice needs all
        input channels, or its groups' ones), so three exact evaluations give the
        line; it is checked at the far end, and the exact geometry is used when it
        does not hold (a roofline-costed layer).
        """
        device = self.cluster.devices[d]
        lines = self._channel_lines(i, device.profile)
        if lines is None:
            work = self._channel_unit(i, device.profile, a, b)
            return PartWork(device.name, work.in_bytes, work.out_bytes, work.compute_s / device.speed)
        (c0, c1), (i0, i1), (o0, o1) = lines
        count = b - a
        return PartWork(device.name, i0 + i1 * count, o0 + o1 * count, (c0 + c1 * count) / device.speed)

    def _channel_unit(self, i: int, profile: DeviceProfile, a: int, b: int) -> PartWork:
        """The exact geometry's cost at speed 1 (shared by devices with the same profile)."""
        key = (i, id(profile), a, b)
        if key not in self._channel_work:
            unit = Device("speed-1", profile)
            self._channel_work[key] = part_work(self.graph, Cluster((unit,), unit.name), self.bounds[i],
                                                self.bounds[i + 1], unit.name, self.channel_region(i, a, b))
        return self._channel_work[key]

    def _channel_lines(self, i: int, profile: DeviceProfile) -> tuple[tuple[float, float], ...] | None:
        """Lines through 1 and 2 blocks, checked at n - 1 blocks: a split part never holds all n (a whole
        layer is costed differently by a calibrated profile: see costmodel's layer calibration)."""
        key = (i, id(profile))
        if key not in self._channel_affine:
            _, n = self.channel_step(i)
            if n <= 2:  # every part holds one block: a constant
                one = self._channel_unit(i, profile, 0, 1)
                lines = [(one.compute_s, 0.0), (one.in_bytes, 0.0), (one.out_bytes, 0.0)]
                self._channel_affine[key] = tuple(lines)
                return self._channel_affine[key]
            samples = [self._channel_unit(i, profile, 0, c) for c in (1, 2, n - 1)]
            fitted = [_affine([w.compute_s for w in samples], n - 1), _affine([w.in_bytes for w in samples], n - 1),
                      _affine([w.out_bytes for w in samples], n - 1)]
            self._channel_affine[key] = None if None in fitted else tuple(x for x in fitted if x is not None)
        return self._channel_affine[key]

    def channel_lanes(self, i: int, devices: Sequence[int]) -> list[Lane]:
        _, n = self.channel_step(i)
        lanes = []
        for d in devices:
            if (i, -1, d) in self._lanes:
                lanes.append(self._lanes[(i, -1, d)])
                continue
            device = self.cluster.devices[d]
            on_hub = device.name == self.master
            lines = self._channel_lines(i, device.profile)
            if lines is None:
                lane = Lane(device.name, on_hub, 0.0, [], [], slow=self._slow_channels(i, d, on_hub))
            else:
                (c0, c1), (i0, i1), (o0, o1) = lines
                to_dev = self.cluster.link(self.master, device.name)
                from_dev = self.cluster.link(device.name, self.master)
                k, slope = c0 / device.speed, c1 / device.speed
                kin = slope_in = 0.0
                if not on_hub:
                    kin = to_dev.alpha_s + i0 / to_dev.bandwidth_Bps
                    slope_in = i1 / to_dev.bandwidth_Bps
                    k += kin + from_dev.alpha_s + o0 / from_dev.bandwidth_Bps
                    slope += slope_in + o1 / from_dev.bandwidth_Bps
                steps = range(n + 1)
                lane = Lane(device.name, on_hub, k, [slope * c for c in steps], [slope * c for c in steps],
                            kin, [slope_in * c for c in steps], [slope_in * c for c in steps])
            self._lanes[(i, -1, d)] = lane
            lanes.append(lane)
        return lanes

    def _slow_channels(self, i: int, d: int, on_hub: bool) -> Callable[[int, int], tuple[float, float]]:
        cluster, master, name = self.cluster, self.master, self.names[d]

        def slow(a: int, b: int) -> tuple[float, float]:
            work = self.channel_work(i, d, a, b)
            if on_hub:
                return work.compute_s, 0.0
            t_in = cluster.tx(master, name, work.in_bytes)
            return t_in + work.compute_s + cluster.tx(name, master, work.out_bytes), t_in

        return slow

    def channel_memory(self, i: int, a: int, b: int) -> int:
        return partition_memory(self.graph, self.bounds[i], self.bounds[i + 1], self.channel_region(i, a, b))

    # -------------------------------------------------------------- device sets

    def device_sets(self, ranking: Sequence[float], mode: DeviceSets) -> Iterator[tuple[int, ...]]:
        """Candidate device sets (size >= 2, in cluster order) for one segment, ranked by its compute times."""
        n = len(self.names)
        if mode == "subsets":
            for size in range(2, n + 1):
                yield from itertools.combinations(range(n), size)
            return
        order = sorted(range(n), key=lambda d: (ranking[d], d))
        for size in range(2, n + 1):
            yield tuple(sorted(order[:size]))

    # -------------------------------------------------------------- building options

    def _option(self, kind: StageKind, split: SplitKind, i: int, j: int, lanes: Sequence[Lane],
                assignment: Sequence[tuple[int, int, int]], work: Callable[[int, int, int], PartWork],
                works: Sequence[PartWork] | None = None) -> SplitOption:
        parts = tuple((lanes[k].device, (a, b)) for k, a, b in assignment)
        if works is None:
            works = [work(self.names.index(lanes[k].device), a, b) for k, a, b in assignment]
        if j == self.L:
            times = [stage_times(works, self.master, [self.master], self.cluster)[0] if n == self.master
                     else math.inf for n in self.names]
        else:
            times = stage_times(works, self.master, self.names, self.cluster)
        return SplitOption(kind, split, i, j, parts, tuple(works), tuple(times))

    def _best_of(self, kind: StageKind, split: SplitKind, i: int, j: int, lanes: Sequence[Lane], n: int,
                 work: Callable[[int, int, int], PartWork],
                 memory: Callable[[int, int], int]) -> SplitOption | None:
        """The better (stage time into the master) of the refined and proportional shares."""
        refined, prop = balance(lanes, n)
        best: tuple[float, Sequence[tuple[int, int, int]], list[PartWork]] | None = None
        for assignment in (refined, prop) if prop != refined else (refined,):
            if len(assignment) < 2:
                continue  # one device: that is a single stage, searched separately
            if not all(memory(a, b) <= self.cluster.device(lanes[k].device).memory_bytes
                       for k, a, b in assignment):
                continue
            works = [work(self.names.index(lanes[k].device), a, b) for k, a, b in assignment]
            time = stage_times(works, self.master, [self.master], self.cluster)[0]
            if best is None or time < best[0]:
                best = (time, assignment, works)
        if best is None:
            return None
        return self._option(kind, split, i, j, lanes, best[1], work, best[2])

    def split_options(self, i: int, device_sets: DeviceSets = "prefix", max_fused: int | None = None,
                      layerwise: bool = True) -> list[SplitOption]:
        """Every split stage starting at unit i (B.2-B.4), one per (end, kind, device set)."""
        if len(self.names) < 2:
            return []
        options: list[SplitOption] = []
        limit = self.L if max_fused is None else min(self.L, i + max_fused)
        for j in range(i + 1, limit + 1):
            if not self.fusable(i, j):
                break
            if j == i + 1 and not layerwise:
                continue
            ranking = [self.segment_cost(i, j, d.profile).full_time() / d.speed for d in self.cluster.devices]
            rows = self.row_maps(j).rows
            bound = self.memory_bound(i, j)
            kind: StageKind = "layerwise" if j == i + 1 else "fused"
            for devices in self.device_sets(ranking, device_sets):
                lanes = self.strip_lanes(i, j, devices)
                cheap = all(self.cluster.devices[d].memory_bytes >= bound for d in devices)

                def work(d: int, a: int, b: int, i: int = i, j: int = j) -> PartWork:
                    return self.strip_work(i, j, d, a, b)

                def memory(a: int, b: int, i: int = i, j: int = j, cheap: bool = cheap) -> int:
                    return 0 if cheap else self.strip_memory(i, j, a, b)

                option = self._best_of(kind, "rows", i, j, lanes, rows, work, memory)
                if option is not None:
                    options.append(option)
        if layerwise and i < self.L and channel_splittable(self.graph, self.units[i]):
            _, blocks = self.channel_step(i)
            if blocks >= 2:
                ranking = [self.single_compute(d, i, i + 1) for d in range(len(self.names))]
                bound = self.memory_bound(i, i + 1)
                for devices in self.device_sets(ranking, device_sets):
                    lanes = self.channel_lanes(i, devices)
                    cheap = all(self.cluster.devices[d].memory_bytes >= bound for d in devices)

                    def cwork(d: int, a: int, b: int, i: int = i) -> PartWork:
                        return self.channel_work(i, d, a, b)

                    def cmemory(a: int, b: int, i: int = i, cheap: bool = cheap) -> int:
                        return 0 if cheap else self.channel_memory(i, a, b)

                    option = self._best_of("layerwise", "channels", i, i + 1, lanes, blocks, cwork, cmemory)
                    if option is not None:
                        options.append(option)
        return options

    # -------------------------------------------------------------- stages

    def single_stage(self, index: int, i: int, j: int, d: int) -> Stage:
        start, stop = self.bounds[i], self.bounds[j]
        return make_stage(self.graph, index, "single", "none", start, stop,
                          [(self.names[d], Region.full(self.graph.shape_at(stop)))])

    def split_stage(self, index: int, option: SplitOption) -> Stage:
        start, stop = self.bounds[option.i], self.bounds[option.j]
        if option.split == "rows":
            regions = [strip_region(self.graph, stop, a, b) for _, (a, b) in option.parts]
        else:
            regions = [self.channel_region(option.i, a, b) for _, (a, b) in option.parts]
        return make_stage(self.graph, index, option.kind, option.split, start, stop,
                          list(zip(option.devices, regions, strict=True)))


def _affine(values: Sequence[float], n: int) -> tuple[float, float] | None:
    """(base, slope) of f(c) = base + slope·c from f(1), f(2), f(n); None when f(n) is off the line."""
    one, two, whole = values
    slope = two - one
    base = one - slope
    return (base, slope) if math.isclose(base + slope * n, whole, rel_tol=1e-9, abs_tol=1e-15) else None


def used_devices(cluster: Cluster, stages: Sequence[Stage]) -> tuple[str, ...]:
    used = {p.device for s in stages for p in s.partitions}
    return tuple(n for n in cluster.names if n in used)

