"""Assemble one tensor per request from the pieces its senders stream in.

Pure and synchronous: the partition and the gateway own admission, timeouts
and concurrency; this only checks each piece against the expected ones and
copies it into place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from edgepart.geometry import Region
from edgepart.partition_service.config import Piece
from edgepart.partition_service.errors import DuplicatePieceError, UnexpectedPieceError
from edgepart.partition_service.wire import DTYPES, FrameHeader

__all__ = ["Assembler", "Pending"]


@dataclass
class Pending:
    request_id: str
    started: float
    tile: torch.Tensor | None = None
    received: set[tuple[str, Region]] = field(default_factory=set)


class Assembler:
    """Collects the pieces of `region` (global coordinates) of a batch-`batch` tensor for many requests."""

    def __init__(self, owner: str, region: Region, batch: int, expected: Sequence[Piece], dtype: str = "float32"):
        self.owner = owner
        self.region = region
        self.batch = batch
        self.dtype = dtype
        self.expected = {(p.sender, p.region): p for p in expected}
        if len(self.expected) != len(expected):
            raise ValueError(f"{owner}: two expected pieces share a sender and a region")
        self.senders = {p.sender: [q.region for q in expected if q.sender == p.sender] for p in expected}
        self._pending: dict[str, Pending] = {}
        # one piece covering the whole region needs no copy
        self._whole = len(expected) == 1 and expected[0].region == region
        # pieces that leave holes in the buffer (regions the layers do not read): zero them
        self._holes = sum(p.region.size for p in expected) != region.size

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._pending

    def check(self, header: FrameHeader) -> Piece:
        """The expected piece this header announces; raises UnexpectedPieceError naming the mismatch."""
        regions = self.senders.get(header.sender)
        if regions is None:
            raise UnexpectedPieceError(f"{self.owner} expects pieces from {sorted(self.senders)}, not from "
                                       f"{header.sender!r}", request_id=header.request_id)
        piece = self.expected.get((header.sender, header.region))
        if piece is None:
            wanted = ", ".join(str(r) for r in regions)
            raise UnexpectedPieceError(f"{self.owner}: piece from {header.sender} covers region {header.region}, "
                                       f"expected {wanted}", request_id=header.request_id)
        if header.stage != piece.stage:
            raise UnexpectedPieceError(f"{self.owner}: piece from {header.sender} says stage {header.stage}, "
                                       f"expected stage {piece.stage}", request_id=header.request_id)
        if header.dtype != self.dtype:
            raise UnexpectedPieceError(f"{self.owner}: piece from {header.sender} has dtype {header.dtype}, "
                                       f"expected {self.dtype}", request_id=header.request_id)
        expected_shape = (self.batch, *piece.region.shape)
        if header.shape != expected_shape:
            raise UnexpectedPieceError(f"{self.owner}: piece from {header.sender} has shape {list(header.shape)}, "
                                       f"expected {list(expected_shape)}", request_id=header.request_id)
        return piece

    def open(self, request_id: str) -> Pending:
        pending = self._pending.get(request_id)
        if pending is None:
            pending = self._pending[request_id] = Pending(request_id, time.monotonic())
        return pending

    def add(self, header: FrameHeader, tensor: torch.Tensor) -> torch.Tensor | None:
        """Store a piece of an opened request; the whole tensor once the last piece is in, else None."""
        piece = self.check(header)
        pending = self._pending.get(header.request_id)
        if pending is None:
            raise KeyError(header.request_id)
        key = (piece.sender, piece.region)
        if key in pending.received:
            raise DuplicatePieceError(f"{self.owner}: second piece from {piece.sender} for request "
                                      f"{header.request_id}", request_id=header.request_id)
        pending.received.add(key)
        if self._whole:
            pending.tile = tensor
        else:
            if pending.tile is None:
                make = torch.zeros if self._holes else torch.empty
                pending.tile = make((self.batch, *self.region.shape), dtype=DTYPES[self.dtype])
            pending.tile[piece.region.relative_to(self.region).slices()] = tensor
        if len(pending.received) < len(self.expected):
            return None
        del self._pending[header.request_id]
        return pending.tile

    def received(self, request_id: str, sender: str, region: Region) -> bool:
        """True when the piece from `sender` covering `region` of an open request is in already."""
        pending = self._pending.get(request_id)
        return pending is not None and (sender, region) in pending.received

    def missing(self, request_id: str) -> tuple[str, ...]:
        pending = self._pending.get(request_id)
        received = pending.received if pending else set()
        return tuple(sorted({sender for sender, region in set(self.expected) - received}))

    def requests(self) -> list[str]:
        """The ids of the requests open now."""
        return list(self._pending)

    def started(self, request_id: str) -> float | None:
        pending = self._pending.get(request_id)
        return pending.started if pending else None

    def discard(self, request_id: str) -> None:
        self._pending.pop(request_id, None)
