"""Half-open boxes over a tensor's non-batch dimensions: (C, H, W) or (F,)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Interval = tuple[int, int]  # [start, stop)


@dataclass(frozen=True)
class Region:
    """A box [start, stop) per non-batch dimension; dims[0] is always channels/features."""

    dims: tuple[Interval, ...]

    @staticmethod
    def full(shape: Sequence[int]) -> Region:
        return Region(tuple((0, int(n)) for n in shape))

    @staticmethod
    def of(*dims: Interval) -> Region:
        return Region(tuple((int(a), int(b)) for a, b in dims))

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def channels(self) -> Interval:
        return self.dims[0]

    @property
    def rows(self) -> Interval:
        return self.dims[1]

    @property
    def cols(self) -> Interval:
        return self.dims[2]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.dims)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def empty(self) -> bool:
        return any(b <= a for a, b in self.dims)

    def replace(self, axis: int, interval: Interval) -> Region:
        dims = list(self.dims)
        dims[axis] = interval
        return Region(tuple(dims))

    def contains(self, other: Region) -> bool:
        return all(a <= c and d <= b for (a, b), (c, d) in zip(self.dims, other.dims, strict=True))

    def intersect(self, other: Region) -> Region:
        return Region(tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(self.dims, other.dims, strict=True)))

    def hull(self, other: Region) -> Region:
        return Region(tuple((min(a, c), max(b, d)) for (a, b), (c, d) in zip(self.dims, other.dims, strict=True)))

    def relative_to(self, outer: Region) -> Region:
        """This region in the coordinates of `outer` (which must contain it)."""
        if not outer.contains(self):
            raise ValueError(f"{self} is not inside {outer}")
        return Region(tuple((a - o, b - o) for (a, b), (o, _) in zip(self.dims, outer.dims, strict=True)))

    def slices(self) -> tuple[slice, ...]:
        """Index a batched tensor: all of the batch, then this box."""
        return (slice(None), *(slice(a, b) for a, b in self.dims))

    def __str__(self) -> str:
        return "x".join(f"[{a},{b})" for a, b in self.dims)


def hull_all(regions: Iterable[Region]) -> Region:
    items = list(regions)
    filled = [r for r in items if not r.empty]  # an empty request adds nothing to the hull
    if filled:
        items = filled
    result = items[0]
    for region in items[1:]:
        result = result.hull(region)
    return result


def tiles_partition(regions: Sequence[Region], shape: Sequence[int]) -> str | None:
    """None when `regions` are disjoint and cover the box `shape`; else why not."""
    full = Region.full(shape)
    total = 0
    for i, region in enumerate(regions):
        if region.ndim != full.ndim:
            return f"region {i} has {region.ndim} dimensions, the tensor has {full.ndim}"
        if region.empty:
            return f"region {i} ({region}) is empty"
        if not full.contains(region):
            return f"region {i} ({region}) is outside the tensor {full}"
        total += region.size
        for j in range(i):
            if not region.intersect(regions[j]).empty:
                return f"regions {j} and {i} overlap ({regions[j]} and {region})"
    if total != full.size:
        return f"regions cover {total} of {full.size} elements of {full}"
    return None


def split_interval(length: int, weights: Sequence[float]) -> list[Interval]:
    """Split [0, length) into len(weights) contiguous parts sized by weight (largest remainder).

    Every part gets at least one element; raises ValueError when there are more parts than elements.
    """
    parts = len(weights)
    if parts < 1:
        raise ValueError("need at least one part")
    if parts > length:
        raise ValueError(f"cannot split {length} rows into {parts} non-empty parts")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {list(weights)}")
    total = float(sum(weights))
    spare = length - parts  # one element each is guaranteed; share the rest by weight
    exact = [spare * w / total for w in weights]
    sizes = [1 + math.floor(e) for e in exact]
    order = sorted(range(parts), key=lambda i: (exact[i] - math.floor(exact[i])), reverse=True)
    for i in order[: length - sum(sizes)]:
        sizes[i] += 1
    return intervals_from_sizes(sizes)


def intervals_from_sizes(sizes: Sequence[int]) -> list[Interval]:
    result = []
    start = 0
    for size in sizes:
        result.append((start, start + size))
        start += size
    return result


def subtract(box: Region, cut: Region) -> list[Region]:
    """`box` minus `cut` as disjoint boxes (at most two per axis)."""
    overlap = box.intersect(cut)
    if overlap.empty:
        return [box]
    pieces = []
    rest = box
    for axis, (lo, hi) in enumerate(overlap.dims):
        a, b = rest.dims[axis]
        if a < lo:
            pieces.append(rest.replace(axis, (a, lo)))
        if hi < b:
            pieces.append(rest.replace(axis, (hi, b)))
        rest = rest.replace(axis, (lo, hi))
    return pieces


def disjoint_cover(regions: Sequence[Region]) -> list[list[Region]]:
    """For each region in order, the disjoint boxes of it that no earlier region covers (empty regions
    stay as they are: they are triggers, not data)."""
    taken: list[Region] = []
    result: list[list[Region]] = []
    for region in regions:
        if region.empty:
            result.append([region])
            continue
        parts = [region]
        for earlier in taken:
            parts = [p for part in parts for p in subtract(part, earlier)]
        result.append(parts)
        taken.extend(parts)
    return result
