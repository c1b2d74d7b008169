"""Tensor payloads on the wire: lossless compression (lz4, zstd) and lossy float16.

ReLU outputs are sparse (often half zeros or more), so a fast lossless codec
shrinks them several-fold; on a slow link that can beat sending them raw (the
planner decides per transfer, `edgepart.planner.codec_cost`). float16 halves a
float32 tensor's bytes at the cost of a rounding error the executor reports.

Decoding never trusts the sender: the decoded size must equal what the header
declares, and the decompressor is bounded by that size, so a small payload
cannot expand into a large allocation (a decompression bomb).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import lz4.block
import torch
import zstandard

from edgepart.errors import EdgepartError
from edgepart.plan import WireCodec, WireDtype

__all__ = ["RAW", "CodecError", "WireFormat", "compress", "decompress", "from_wire", "on_wire"]

ZSTD_LEVEL = 1  # the fastest level: activations are compressed on every request, on small CPUs
_ZSTD_COMPRESSOR = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
_ZSTD_DECOMPRESSOR = zstandard.ZstdDecompressor()


class CodecError(EdgepartError, ValueError):
    """A compressed payload that is malformed or does not decode to the size its header declares."""


@dataclass(frozen=True)
class WireFormat:
    """How one transfer's tensor travels: its lossless codec and the element type on the wire."""

    codec: WireCodec = "none"
    dtype: WireDtype = "float32"

    @property
    def raw(self) -> bool:
        return self.codec == "none" and self.dtype == "float32"


RAW = WireFormat()


def on_wire(tensor: torch.Tensor, dtype: WireDtype) -> torch.Tensor:
    """The tensor as it travels: float32 cast to float16 when asked (other dtypes travel as they are)."""
    if dtype == "float16" and tensor.dtype == torch.float32:
        return tensor.to(torch.float16)
    return tensor


def from_wire(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The received tensor in the dtype its header declares."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def compress(codec: WireCodec, data: bytes | bytearray | memoryview) -> bytes:
    if codec == "lz4":
        return bytes(lz4.block.compress(data, store_size=False))
    if codec == "zstd":
        return bytes(_ZSTD_COMPRESSOR.compress(data))
    return bytes(data)


Buffer = bytes | bytearray | memoryview | mmap.mmap


def decompress(codec: WireCodec, data: Buffer, expected: int) -> bytearray:
    """`data` decoded; exactly `expected` bytes or a `CodecError` (never allocates more than `expected`)."""
    if codec == "none":
        out = bytearray(data)
    elif codec == "lz4":
        out = _lz4_decompress(data, expected)
    else:
        out = _zstd_decompress(data, expected)
    if len(out) != expected:
        raise CodecError(f"{codec} payload of {memoryview(data).nbytes} bytes decodes to {len(out)} bytes, "
                         f"the header declares {expected}")
    return out


def _lz4_decompress(data: Buffer, expected: int) -> bytearray:
    if expected == 0:
        return bytearray()
    try:  # uncompressed_size caps the output buffer: more is an error, not an allocation
        return bytearray(lz4.block.decompress(data, uncompressed_size=expected))
    except lz4.block.LZ4BlockError as err:
        raise CodecError(f"lz4 payload of {memoryview(data).nbytes} bytes does not decode to the {expected} bytes "
                         f"its header declares (truncated, oversized or corrupt): {err}") from None


def _zstd_decompress(buffer: Buffer, expected: int) -> bytearray:
    data = memoryview(buffer)
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise CodecError(f"zstd payload of {memoryview(data).nbytes} bytes has no valid frame header: {err}") from None
    if size != expected:  # checked before decompressing: the frame's own size claim is not trusted
        raise CodecError(f"zstd frame declares {size} decoded bytes, the header declares {expected}")
    try:
        return bytearray(_ZSTD_DECOMPRESSOR.decompress(data, max_output_size=expected))
    except zstandard.ZstdError as err:
        raise CodecError(f"zstd payload of {memoryview(data).nbytes} bytes does not decode to the {expected} "
                         f"bytes its header declares (truncated or corrupt): {err}") from None
