"""The tensor frame: round trips, validation before allocation, limits, and the error mapping."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import edgepart.partition_service as data_plane
from edgepart.geometry import Region
from edgepart.partition_service.budget import PayloadBudget
from edgepart.partition_service.errors import (
    BadRequestError,
    DuplicatePieceError,
    FrameError,
    FrameTooLargeError,
    MemoryBudgetError,
    NotReadyError,
    PeerError,
    PeerUnreachableError,
    RequestTimeoutError,
    ServiceError,
    TruncatedFrameError,
    UnexpectedPieceError,
    error_body,
    error_from_response,
)
from edgepart.partition_service.wire import (
    DTYPES,
    FrameHeader,
    FrameReader,
    Limits,
    _from_le,
    _le_bytes,
    decode_frame,
    encode_frame,
    frame_bytes,
    make_header,
)


def _frame(tensor: torch.Tensor, region: Region | None = None, rid: str = "r-1") -> bytes:
    region = region or Region.full(tensor.shape[1:])
    return frame_bytes(make_header(rid, tensor, region, 0, "s0p0"), tensor)


def _raw(header: dict[str, object], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


GOOD = {"request_id": "r", "dtype": "float32", "shape": [1, 2, 3, 4], "region": {"c": [0, 2], "h": [0, 3], "w": [0, 4]},
        "stage": 0, "sender": "s0p0"}


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
def test_round_trip_every_dtype(dtype: torch.dtype) -> None:
    tensor = (torch.randn(2, 3, 4, 5) * 50).to(dtype)
    frame = decode_frame(_frame(tensor))
    assert frame.tensor.dtype == dtype
    assert torch.equal(frame.tensor, tensor)
    assert frame.header.shape == (2, 3, 4, 5)


def test_layout_is_big_endian_length_json_then_little_endian_data() -> None:
    tensor = torch.tensor([[1.0, -2.0]])
    data = _frame(tensor, Region.of((0, 2)))
    (length,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4:4 + length])
    assert header == {"request_id": "r-1", "dtype": "float32", "shape": [1, 2], "region": {"c": [0, 2]},
                      "stage": 0, "sender": "s0p0"}
    assert data[4 + length:] == struct.pack("<2f", 1.0, -2.0)


def test_offset_region_describes_global_coordinates() -> None:
    tensor = torch.randn(1, 8, 3, 16)
    region = Region.of((0, 8), (10, 13), (0, 16))
    frame = decode_frame(_frame(tensor, region))
    assert frame.header.region == region


def test_swapped_byte_order_round_trips() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8):
        tensor = (torch.randn(3, 5) * 9).to(dtype)
        data = bytearray(_le_bytes(tensor, little=False))
        if tensor.element_size() > 1:
            assert bytes(data) != tensor.contiguous().view(torch.uint8).numpy().tobytes()
        assert torch.equal(_from_le(data, dtype, (3, 5), little=False), tensor)


def test_non_contiguous_tensors_are_sent_as_their_values() -> None:
    base = torch.randn(1, 4, 6, 6)
    view = base[:, :, 1:4, 2:5]
    frame = decode_frame(_frame(view.contiguous()))
    assert torch.equal(frame.tensor, view)
    parts = encode_frame(make_header("r", view, Region.full(view.shape[1:]), 0, "s"), view)
    assert decode_frame(b"".join(parts)).tensor.equal(view)


def test_zero_size_trigger_frame() -> None:
    empty = torch.empty(1, 4, 0, 8)
    frame = decode_frame(_frame(empty, Region.of((0, 4), (5, 5), (0, 8))))
    assert frame.tensor.shape == (1, 4, 0, 8)


@given(cuts=st.lists(st.integers(1, 400), min_size=0, max_size=30))
@settings(max_examples=60, deadline=None)
def test_reader_accepts_any_chunking(cuts: list[int]) -> None:
    tensor = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    data = _frame(tensor)
    reader = FrameReader(Limits(), len(data))
    pos = 0
    for cut in cuts:
        reader.feed(data[pos:pos + cut])
        pos += cut
    reader.feed(data[pos:])
    assert torch.equal(reader.finish().tensor, tensor)


@pytest.mark.parametrize(("data", "error", "words"), [
    (b"", TruncatedFrameError, "shorter than its 4-byte length prefix"),
    (b"\x00\x00", TruncatedFrameError, "4-byte length prefix"),
    (struct.pack(">I", 0), FrameError, "header length is 0"),
    (struct.pack(">I", 50) + b"{}", TruncatedFrameError, "2 of 50 header bytes"),
    (struct.pack(">I", 1 << 30), FrameTooLargeError, "over the limit"),
    (struct.pack(">I", 5) + b"hello", FrameError, "not valid JSON"),
    (struct.pack(">I", 2) + b"\xff\xfe", FrameError, "not UTF-8"),
    (struct.pack(">I", 2) + b"[]", FrameError, "must be a JSON object"),
    (_raw({**GOOD, "dtype": "complex64"}), FrameError, "dtype"),
    (_raw({k: v for k, v in GOOD.items() if k != "shape"}), FrameError, "shape"),
    (_raw({**GOOD, "shape": [1, -2, 3, 4]}), FrameError, "shape"),
    (_raw({**GOOD, "extra": 1}), FrameError, "extra"),
    (_raw({**GOOD, "request_id": "a b"}), FrameError, "request_id"),
    (_raw({**GOOD, "region": {"c": [0, 2], "h": [0, 2], "w": [0, 4]}}), FrameError, "region"),
    (_raw({**GOOD, "region": {"c": [0, 2]}}), FrameError, "dimensions"),
    (_raw(GOOD, b"\x00" * 10), TruncatedFrameError, "payload has 10 bytes, the header declares 96"),
    (_raw(GOOD, b"\x00" * 100), FrameError, "payload has 100 bytes"),
])
def test_malformed_frames_name_the_problem(data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_frame(data)
    reader = FrameReader(Limits())
    with pytest.raises(error, match=words.split(",")[0] if "payload" not in words else "payload"):
        reader.feed(data)
        reader.finish()


def test_oversized_tensor_is_refused_before_allocation() -> None:
    huge = {**GOOD, "shape": [1, 1 << 20, 1 << 10, 1 << 8],
            "region": {"c": [0, 1 << 20], "h": [0, 1 << 10], "w": [0, 1 << 8]}}
    with pytest.raises(FrameTooLargeError, match="over the limit of 268435456 bytes"):
        decode_frame(_raw(huge))  # 1 TiB declared, nothing allocated
    with pytest.raises(FrameTooLargeError, match="request body of"):
        FrameReader(Limits(max_tensor_bytes=1000), content_length=10**9)
    small = Limits(max_header_bytes=64)
    with pytest.raises(FrameTooLargeError, match="header length"):
        decode_frame(_frame(torch.zeros(1, 1)), small)


def test_content_length_must_match_the_header() -> None:
    data = _frame(torch.zeros(1, 2, 2, 2))
    reader = FrameReader(Limits(), content_length=len(data) + 7)
    with pytest.raises(FrameError, match="request body has trailing bytes"):
        reader.feed(data)
    reader = FrameReader(Limits(), content_length=len(data) - 7)
    with pytest.raises(TruncatedFrameError, match="request body is truncated"):
        reader.feed(data[:-7])


def test_header_model_rejects_mismatched_tensors() -> None:
    header = make_header("r", torch.zeros(1, 2), Region.of((0, 2)), 0, "s")
    with pytest.raises(FrameError, match="does not match its header"):
        encode_frame(header, torch.zeros(1, 3))
    with pytest.raises(FrameError, match="cannot be sent"):
        make_header("r", torch.zeros(1, 2, dtype=torch.complex64), Region.of((0, 2)), 0, "s")
    assert FrameHeader.model_validate(GOOD).nbytes == 96


def test_no_pickle_on_the_network_path() -> None:
    package = Path(data_plane.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "pickle" not in text.replace("no pickle", "").replace("No pickle", ""), source.name
        assert "torch.load" not in text and "allow_pickle=True" not in text, source.name


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(("error", "status"), [
    (FrameError, 400), (TruncatedFrameError, 400), (FrameTooLargeError, 413), (UnexpectedPieceError, 422),
    (DuplicatePieceError, 409), (NotReadyError, 503), (RequestTimeoutError, 504), (PeerError, 502),
    (PeerUnreachableError, 503), (BadRequestError, 400),
])
def test_errors_round_trip_through_their_json_body(error: type[ServiceError], status: int) -> None:
    original = error("partition s1p0 is gone", peer="s1p0", request_id="abc")
    assert original.status == status
    body = json.dumps(error_body(original)).encode()
    rebuilt = error_from_response(status, body)
    assert type(rebuilt) is error
    assert (rebuilt.detail, rebuilt.peer, rebuilt.request_id) == ("partition s1p0 is gone", "s1p0", "abc")


def test_unknown_error_bodies_fall_back_on_the_status() -> None:
    assert isinstance(error_from_response(503, b"<html>busy</html>", "gw"), NotReadyError)
    err = error_from_response(500, b"boom", "s0p0")
    assert isinstance(err, PeerError) and err.peer == "s0p0" and "boom" in err.detail


def test_a_header_alone_makes_no_buffer_until_the_receiver_expects_it_and_the_budget_has_room() -> None:
    """The reader's order: limits, then `admit`, then the payload budget, and only then the buffer."""
    tensor = torch.zeros(1, 4, 4, 4)
    header = make_header("r", tensor, Region.full((4, 4, 4)), 0, "s0p0").model_dump_json().encode()
    prefix = len(header).to_bytes(4, "big") + header

    def refuse(_: object) -> None:
        raise UnexpectedPieceError("not expected")

    reader = FrameReader(Limits(), admit=refuse)
    with pytest.raises(UnexpectedPieceError):
        reader.feed(prefix)
    assert reader.payload_window() is None
    budget = PayloadBudget(limit=100)
    reader = FrameReader(Limits(), budget=budget)
    with pytest.raises(MemoryBudgetError, match="cap of 100 bytes"):
        reader.feed(prefix)  # 256 bytes over a 100-byte budget
    assert reader.payload_window() is None and budget.in_flight == 0 and budget.refused == 1
    budget = PayloadBudget(limit=1000)
    reader = FrameReader(Limits(), budget=budget)
    reader.feed(prefix)
    assert budget.in_flight == 256
    reader.release()
    reader.release()  # idempotent
    assert budget.in_flight == 0


def test_large_payloads_are_their_own_mappings_and_small_ones_heap_buffers() -> None:
    import mmap

    from edgepart.partition_service.budget import MMAP_PAYLOAD_BYTES, payload_buffer

    assert isinstance(payload_buffer(MMAP_PAYLOAD_BYTES), mmap.mmap)  # unmapped when freed
    assert isinstance(payload_buffer(MMAP_PAYLOAD_BYTES - 1), bytearray)
    big = torch.randn(1, 4, 1024, 1024)  # 16 MiB: decoded into a mapping, read back intact
    frame = decode_frame(frame_bytes(make_header("r", big, Region.full(big.shape[1:]), 0, "s"), big))
    assert torch.equal(frame.tensor, big)
    reader = FrameReader(Limits())
    reader.feed(frame_bytes(make_header("r", big, Region.full(big.shape[1:]), 0, "s"), big))
    assert torch.equal(reader.finish().tensor, big)
