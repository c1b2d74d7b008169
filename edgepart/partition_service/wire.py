"""The tensor frame every hop carries: no pickle, validated before any allocation.

Layout::

    +----------------+----------------------------+----------------------------------+
    | 4 bytes        | header_len bytes           | nbytes = prod(shape) * itemsize  |
    | big-endian u32 | UTF-8 JSON object (header) | raw little-endian tensor data    |
    +----------------+----------------------------+----------------------------------+

A frame may carry its payload encoded (`codec`: lz4 or zstd, with its encoded
size in `wire_bytes`; `wire_dtype` float16: a float32 tensor sent as float16).
The payload then holds `wire_bytes` bytes (codec) or the float16 data; the
reader checks the encoded size against the decoded size before allocating, and
the decoder is bounded by the size the header declares (`edgepart.codec`).

The header names the request, the dtype and the full shape (batch first), the
region of the global tensor the data covers (channels, or channels x rows x
cols, half-open), the stage that produced it (-1: the client's input) and the
sender (a partition id, or ``gateway``). A reader checks the header length
against its limit, parses and validates the header, checks that the region
matches the shape and that the declared size is within its limit and equals
what the body holds, asks the receiver whether it expects such a piece at all
(`admit`: a partition knows every expected piece's exact region and size),
reserves the bytes against the process's payload budget, and only then
allocates the payload buffer.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgepart.codec import RAW, CodecError, WireFormat, compress, decompress, from_wire, on_wire
from edgepart.geometry import Region
from edgepart.partition_service.budget import PayloadBudget, Reservation, payload_buffer
from edgepart.partition_service.errors import FrameError, FrameTooLargeError, TruncatedFrameError
from edgepart.plan import InputRegionField, WireCodec

__all__ = [
    "CONTENT_TYPE", "DTYPES", "Frame", "FrameHeader", "FrameReader", "Limits", "decode_frame", "encode_frame",
    "frame_bytes", "frame_size", "read_frame",
]

CONTENT_TYPE = "application/x-edgepart-tensor"
_PREFIX = struct.Struct(">I")
_NATIVE_LITTLE = sys.byteorder == "little"

DTypeName = Literal["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_SWAP_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Limits:
    """Size limits a reader enforces before it allocates anything."""

    max_header_bytes: int = 16 * 1024
    max_tensor_bytes: int = 256 * 1024 * 1024

    @property
    def max_frame_bytes(self) -> int:
        return _PREFIX.size + self.max_header_bytes + self.max_tensor_bytes


class FrameHeader(BaseModel):
    """The JSON header of a frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                                     description="Request id, the same on every hop of one inference.")]
    dtype: DTypeName = Field(description="Element type; data is little-endian.")
    shape: Annotated[tuple[Annotated[int, Field(ge=0, le=1 << 31)], ...],
                     Field(min_length=2, max_length=5, description="Full shape, batch first.")]
    region: InputRegionField = Field(description="Region of the global tensor (without batch) this data covers; "
                                                 "empty for a trigger that carries no data.")
    stage: Annotated[int, Field(ge=-1, le=4096, description="Stage that produced the tensor; -1: client input.")]
    sender: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                 description="Partition id of the sender, or 'gateway'.")]
    budget_s: float | None = Field(default=None, ge=-1e9, le=1e9,
                                   description="Seconds left of the request's deadline when the sender put the "
                                               "frame on the wire (None: no deadline). A remaining budget, not "
                                               "a time: hosts' clocks need not agree; each receiver turns it into "
                                               "a deadline on its own monotonic clock and each sender stamps what "
                                               "is left.")
    codec: WireCodec | None = Field(default=None, description="Lossless codec of the payload (None: raw).")
    wire_bytes: int | None = Field(default=None, ge=0, le=1 << 40,
                                   description="Encoded payload bytes; required with a codec.")
    wire_dtype: Literal["float16"] | None = Field(default=None, description="float16: the float32 tensor "
                                                                             "travels as float16 (lossy).")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def raw_nbytes(self) -> int:
        """Bytes of the payload once decompressed (in the wire dtype)."""
        itemsize = 2 if self.wire_dtype == "float16" else self.itemsize
        return math.prod(self.shape) * itemsize

    @property
    def payload_nbytes(self) -> int:
        """Bytes of the payload on the wire."""
        encoded = self.codec not in (None, "none") and self.wire_bytes is not None
        return self.wire_bytes if encoded and self.wire_bytes is not None else self.raw_nbytes

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    tensor: torch.Tensor
    nbytes: int  # bytes on the wire, prefix and header included


def make_header(request_id: str, tensor: torch.Tensor, region: Region, stage: int, sender: str,
                budget_s: float | None = None, wire: WireFormat = RAW) -> FrameHeader:
    """The header of `tensor`'s frame; `wire` asks for a codec and float16 (`encode_frame` applies them)."""
    dtype = _NAMES.get(tensor.dtype)
    if dtype is None:
        raise FrameError(f"dtype {tensor.dtype} cannot be sent; supported: {', '.join(DTYPES)}")
    half = "float16" if wire.dtype == "float16" and tensor.dtype == torch.float32 else None
    return FrameHeader(request_id=request_id, dtype=dtype, shape=tuple(tensor.shape), region=region,
                       stage=stage, sender=sender, budget_s=budget_s,
                       codec=None if wire.codec == "none" else wire.codec, wire_dtype=half)


def _le_bytes(tensor: torch.Tensor, little: bool) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    if not little and flat.element_size() > 1:
        swapped = flat.view(_SWAP_VIEW[flat.element_size()]).numpy().byteswap()
        return swapped.view(np.uint8).data
    return flat.view(torch.uint8).numpy().data


def _from_le(buffer: bytearray | mmap.mmap, dtype: torch.dtype, shape: Sequence[int], little: bool) -> torch.Tensor:
    if not buffer:
        return torch.empty(tuple(shape), dtype=dtype)
    flat = torch.frombuffer(buffer, dtype=torch.uint8)
    if not little and dtype.itemsize > 1:
        swapped = flat.view(_SWAP_VIEW[dtype.itemsize]).numpy().byteswap()
        flat = torch.from_numpy(swapped.view("u1"))
    return flat.view(dtype).reshape(tuple(shape))


def encode_frame(header: FrameHeader, tensor: torch.Tensor, *,
                 little: bool = _NATIVE_LITTLE) -> list[bytes | memoryview]:
    """The frame as [prefix + header, payload]; the payload is a view of the tensor (no copy when contiguous).

    With a codec in the header the payload is compressed and `wire_bytes` set; a payload the codec does not
    shrink goes raw (the header's codec dropped), so the encoded size never exceeds the raw one.
    """
    if tuple(tensor.shape) != header.shape or DTYPES[header.dtype] != tensor.dtype:
        raise FrameError(f"tensor {tuple(tensor.shape)} {tensor.dtype} does not match its header "
                         f"{header.shape} {header.dtype}")
    raw = _le_bytes(on_wire(tensor, header.wire_dtype or "float32"), little)
    payload: bytes | memoryview = raw
    if header.codec is not None and header.codec != "none":
        packed = compress(header.codec, raw)
        if len(packed) < raw.nbytes:
            header, payload = header.model_copy(update={"wire_bytes": len(packed)}), packed
        else:
            header = header.model_copy(update={"codec": None, "wire_bytes": None})
    head = header.model_dump_json(exclude_none=True).encode()  # no budget_s: no deadline
    return [_PREFIX.pack(len(head)) + head, payload]


def _decode_payload(header: FrameHeader, buffer: bytearray | mmap.mmap, little: bool) -> torch.Tensor:
    """The tensor from its payload as received: decompressed (bounded by the header's size) and cast back."""
    if header.codec is None and header.wire_dtype is None:
        return _from_le(buffer, header.torch_dtype, header.shape, little)
    wire_dtype = DTYPES[header.wire_dtype or header.dtype]
    if header.codec is not None:
        try:
            buffer = decompress(header.codec, buffer, header.raw_nbytes)
        except CodecError as err:
            raise FrameError(f"frame payload (wire_bytes {header.wire_bytes}): {err}") from None
    return from_wire(_from_le(buffer, wire_dtype, header.shape, little), header.torch_dtype)


def frame_bytes(header: FrameHeader, tensor: torch.Tensor) -> bytes:
    return b"".join(encode_frame(header, tensor))


def frame_size(parts: Sequence[bytes | memoryview]) -> int:
    return sum(memoryview(p).nbytes for p in parts)


def _parse_header(raw: bytes | bytearray, limits: Limits) -> FrameHeader:
    try:  # pydantic-core's own JSON parser: a third cheaper than json.loads and a dict validated after it
        header = FrameHeader.model_validate_json(raw)
    except ValidationError:
        header = _parse_header_slowly(raw)  # words the failure as always
    return _check_header(header, limits)


def _parse_header_slowly(raw: bytes | bytearray) -> FrameHeader:
    try:
        data: Any = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FrameError("frame header is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise FrameError(f"frame header is not valid JSON: {err.msg} at character {err.pos}") from None
    if not isinstance(data, dict):
        raise FrameError(f"frame header must be a JSON object, got {type(data).__name__}")
    try:
        header = FrameHeader.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if not str(p).startswith('function')) or 'header'}: "
                             f"{str(e['msg']).removeprefix('Value error, ')}" for e in err.errors()[:5])
        raise FrameError(f"frame header: {problems}") from None
    return header


def _check_header(header: FrameHeader, limits: Limits) -> FrameHeader:
    if header.region.ndim != len(header.shape) - 1:
        raise FrameError(f"frame header: region {header.region} has {header.region.ndim} dimensions, "
                         f"the shape {list(header.shape)} has {len(header.shape) - 1} besides the batch")
    if header.region.shape != header.shape[1:]:
        raise FrameError(f"frame header: region {header.region} has shape {list(header.region.shape)}, "
                         f"the tensor is {list(header.shape[1:])} (besides the batch)")
    if header.nbytes > limits.max_tensor_bytes:
        raise FrameTooLargeError(f"frame declares a {header.nbytes}-byte tensor {list(header.shape)} {header.dtype}, "
                                 f"over the limit of {limits.max_tensor_bytes} bytes")
    _check_encoding(header)
    return header


def _check_encoding(header: FrameHeader) -> None:
    """A codec names its encoded size, never more than the raw payload (senders fall back to raw)."""
    if header.wire_dtype is not None and header.dtype != "float32":
        raise FrameError(f"frame header: wire_dtype: float16 carries only a float32 tensor, not {header.dtype}")
    if header.codec in (None, "none"):
        if header.wire_bytes is not None:
            raise FrameError("frame header: wire_bytes: given without a codec")
        if header.codec == "none":
            raise FrameError("frame header: codec: omit it for a raw payload")
        return
    if header.wire_bytes is None:
        raise FrameError(f"frame header: wire_bytes: required with codec {header.codec}")
    if header.wire_bytes > header.raw_nbytes:
        raise FrameTooLargeError(f"frame header: wire_bytes: a {header.wire_bytes}-byte {header.codec} payload is "
                                 f"larger than the {header.raw_nbytes} bytes it decodes to")


def _header_length(prefix: bytes | bytearray, limits: Limits) -> int:
    (length,) = _PREFIX.unpack(bytes(prefix[:4]))
    if length == 0:
        raise FrameError("frame header length is 0")
    if length > limits.max_header_bytes:
        raise FrameTooLargeError(f"frame header length {length} is over the limit of {limits.max_header_bytes} bytes "
                                 "(is this a tensor frame?)")
    return int(length)


def decode_frame(data: bytes | bytearray | memoryview, limits: Limits = Limits(), *,
                 little: bool = _NATIVE_LITTLE) -> Frame:
    """Decode a whole frame held in memory (one copy of the payload, into a fresh buffer)."""
    view = memoryview(data)
    if view.nbytes < _PREFIX.size:
        raise TruncatedFrameError(f"frame has {view.nbytes} bytes, shorter than its 4-byte length prefix")
    length = _header_length(view[:4].tobytes(), limits)
    if view.nbytes < 4 + length:
        raise TruncatedFrameError(f"frame ends after {view.nbytes - 4} of {length} header bytes")
    header = _parse_header(view[4:4 + length].tobytes(), limits)
    payload = view[4 + length:]
    if payload.nbytes != header.payload_nbytes:
        kind = TruncatedFrameError if payload.nbytes < header.payload_nbytes else FrameError
        raise kind(f"frame payload has {payload.nbytes} bytes, the header declares {header.payload_nbytes} "
                   f"({_describe(header)})")
    buffer = bytearray(payload)
    return Frame(header, _decode_payload(header, buffer, little), view.nbytes)


def _describe(header: FrameHeader) -> str:
    what = f"{list(header.shape)} {header.dtype}"
    if header.wire_dtype is not None:
        what += f" as {header.wire_dtype}"
    if header.codec is not None:
        what += f", {header.codec} wire_bytes"
    return what


Admit = Callable[[FrameHeader], None]


class FrameReader:
    """Incremental frame decoder: feed chunks, then `finish()`; allocates the payload once, after validation.

    `admit(header)` raises when the receiver does not expect such a piece; `budget` caps the payload bytes
    the process holds (503 beyond). Call `release()` once the frame is handed on (or dropped).
    """

    def __init__(self, limits: Limits = Limits(), content_length: int | None = None, *,
                 little: bool = _NATIVE_LITTLE, admit: Admit | None = None, budget: PayloadBudget | None = None):
        if content_length is not None and content_length > limits.max_frame_bytes:
            raise FrameTooLargeError(f"request body of {content_length} bytes is over the limit of "
                                     f"{limits.max_frame_bytes} bytes")
        self._limits = limits
        self._content_length = content_length
        self._little = little
        self._head = bytearray()
        self._header_len: int | None = None
        self._header: FrameHeader | None = None
        self._payload: bytearray | mmap.mmap | None = None
        self._filled = 0
        self._total = 0
        self._admit = admit
        self._budget = budget
        self._reservation: Reservation | None = None

    @property
    def header(self) -> FrameHeader | None:
        """The validated header, once read."""
        return self._header

    def release(self) -> None:
        """Return the payload's bytes to the budget (the frame was handed on, or dropped)."""
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        self._total += view.nbytes
        while view.nbytes:
            if self._payload is None:
                view = self._feed_head(view)
                continue
            room = len(self._payload) - self._filled
            if view.nbytes > room:
                raise FrameError(f"frame has trailing bytes after its {len(self._payload)}-byte payload")
            # through a memoryview: a plain copy (bytearray slice assignment first copies `view` into a temporary)
            memoryview(self._payload)[self._filled:self._filled + view.nbytes] = view
            self._filled += view.nbytes
            view = view[view.nbytes:]

    def payload_window(self) -> memoryview | None:
        """The payload bytes still to come, to receive straight into (None until the header is read).

        A socket can `recv_into` this window and report the count with `advance`: no copy besides the kernel's.
        """
        if self._payload is None:
            return None
        return memoryview(self._payload)[self._filled:]

    def advance(self, count: int) -> None:
        """`count` bytes were written into `payload_window()`."""
        if self._payload is None or self._filled + count > len(self._payload):
            raise FrameError(f"frame has trailing bytes after its {len(self._payload or b'')}-byte payload")
        self._filled += count
        self._total += count

    def _feed_head(self, view: memoryview) -> memoryview:
        need = 4 if self._header_len is None else 4 + self._header_len
        take = min(need - len(self._head), view.nbytes)
        self._head += view[:take]
        view = view[take:]
        if len(self._head) < need:
            return view
        if self._header_len is None:
            self._header_len = _header_length(self._head, self._limits)
            return view
        header = _parse_header(self._head[4:], self._limits)
        expected = 4 + self._header_len + header.payload_nbytes
        if self._content_length is not None and self._content_length != expected:
            kind = TruncatedFrameError if self._content_length < expected else FrameError
            what = "is truncated" if self._content_length < expected else "has trailing bytes"
            raise kind(f"request body {what}: {self._content_length} bytes, the frame header declares "
                       f"{expected} ({_describe(header)})")
        if self._admit is not None:
            self._admit(header)  # before anything is allocated: a piece the receiver does not expect goes
        if self._budget is not None:
            self._reservation = self._budget.reserve(header.nbytes, f"the piece of request {header.request_id}")
        self._header = header
        self._payload = payload_buffer(header.payload_nbytes)
        return view

    def finish(self) -> Frame:
        if self._header is None or self._payload is None:
            if self._header_len is None:
                raise TruncatedFrameError(f"frame has {len(self._head)} bytes, shorter than its 4-byte length prefix")
            raise TruncatedFrameError(f"frame ends after {len(self._head) - 4} of {self._header_len} header bytes")
        if self._filled != len(self._payload):
            raise TruncatedFrameError(f"frame payload has {self._filled} bytes, the header declares "
                                      f"{len(self._payload)} ({_describe(self._header)})")
        tensor = _decode_payload(self._header, self._payload, self._little)
        return Frame(self._header, tensor, self._total)


async def read_frame(chunks: AsyncIterator[bytes], limits: Limits = Limits(),
                     content_length: int | None = None) -> Frame:
    """Read one frame from a byte stream (an HTTP request body), with no expectations and no budget."""
    reader = FrameReader(limits, content_length)
    async for chunk in chunks:
        if chunk:
            reader.feed(chunk)
    return reader.finish()
