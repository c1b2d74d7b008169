"""Compressed and float16 payloads on the wire: round trips, and decoding that trusts no size it is told."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from edgepart.codec import CodecError, WireFormat, compress, decompress
from edgepart.geometry import Region
from edgepart.partition_service.errors import FrameError, FrameTooLargeError, TruncatedFrameError
from edgepart.partition_service.wire import FrameReader, decode_frame, encode_frame, make_header


def _relu(shape: tuple[int, ...] = (1, 16, 24, 24)) -> torch.Tensor:
    return torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(3)))


def _encoded(tensor: torch.Tensor, wire: WireFormat) -> bytes:
    header = make_header("r-1", tensor, Region.full(tensor.shape[1:]), 0, "s0p0", wire=wire)
    return b"".join(bytes(p) for p in encode_frame(header, tensor))


def _split(frame: bytes) -> tuple[dict[str, object], bytes]:
    (length,) = struct.unpack(">I", frame[:4])
    return json.loads(frame[4:4 + length]), frame[4 + length:]


def _join(header: dict[str, object], payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_lossless_codecs_round_trip_bit_exact_and_shrink_relu_outputs(codec: str) -> None:
    tensor = _relu()
    frame = _encoded(tensor, WireFormat(codec))  # type: ignore[arg-type]
    header, payload = _split(frame)
    assert header["codec"] == codec and header["wire_bytes"] == len(payload)
    assert len(payload) < tensor.numel() * 4 * 0.8  # half the values are zeros
    decoded = decode_frame(frame)
    assert torch.equal(decoded.tensor, tensor) and decoded.tensor.dtype == torch.float32


def test_incompressible_payload_goes_raw() -> None:
    noise = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    header, payload = _split(_encoded(noise, WireFormat("lz4")))
    assert "codec" not in header and len(payload) == noise.numel() * 4
    assert torch.equal(decode_frame(_encoded(noise, WireFormat("lz4"))).tensor, noise)


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_float16_on_the_wire_halves_bytes_with_a_bounded_error(codec: str) -> None:
    tensor = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    frame = _encoded(tensor, WireFormat(codec, "float16"))  # type: ignore[arg-type]
    header, payload = _split(frame)
    assert header["wire_dtype"] == "float16"
    assert len(payload) <= tensor.numel() * 2
    out = decode_frame(frame).tensor
    assert out.dtype == torch.float32 and not torch.equal(out, tensor)
    assert float((out - tensor).abs().max()) < 4e-3


def test_streaming_reader_decodes_compressed_payload_in_chunks() -> None:
    tensor = _relu()
    frame = _encoded(tensor, WireFormat("zstd"))
    reader = FrameReader(content_length=len(frame))
    for offset in range(0, len(frame), 1000):
        reader.feed(frame[offset:offset + 1000])
    assert torch.equal(reader.finish().tensor, tensor)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_truncated_compressed_payload_is_named(codec: str) -> None:
    header, payload = _split(_encoded(_relu(), WireFormat(codec)))  # type: ignore[arg-type]
    with pytest.raises(TruncatedFrameError, match=r"payload has \d+ bytes, the header declares \d+ .*wire_bytes"):
        decode_frame(_join(header, payload[:-10]))
    # a sender that lies about wire_bytes: the codec finds the stream cut short
    header["wire_bytes"] = len(payload) - 10
    with pytest.raises(FrameError, match=rf"wire_bytes {len(payload) - 10}.*{codec}"):
        decode_frame(_join(header, payload[:-10]))


def test_wire_bytes_over_the_raw_size_is_refused_before_allocation() -> None:
    header, _ = _split(_encoded(_relu(), WireFormat("lz4")))
    raw = 16 * 24 * 24 * 4
    header["wire_bytes"] = raw + 1
    with pytest.raises(FrameTooLargeError, match=rf"wire_bytes: a {raw + 1}-byte lz4 payload is larger than the "
                                                 rf"{raw} bytes"):
        FrameReader().feed(_join(header, b""))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_decompression_bomb_is_bounded_by_the_declared_size(codec: str) -> None:
    # 8 MiB of zeros compress to under 64 KiB; the header claims a 64 KiB tensor
    bomb = compress(codec, bytes(8 << 20))  # type: ignore[arg-type]
    small = torch.zeros(1, 1, 8, 8)
    header, _ = _split(_encoded(small, WireFormat("none")))
    header.update(codec=codec, wire_bytes=len(bomb))
    header["shape"] = [1, 1, 128, 128]
    header["region"] = {"c": [0, 1], "h": [0, 128], "w": [0, 128]}
    assert len(bomb) < 128 * 128 * 4
    with pytest.raises(FrameError, match=codec):
        decode_frame(_join(header, bomb))


def test_decompress_checks_the_exact_size() -> None:
    packed = compress("zstd", bytes(100))
    assert decompress("zstd", packed, 100) == bytearray(100)
    with pytest.raises(CodecError, match="zstd frame declares 100 decoded bytes, the header declares 50"):
        decompress("zstd", packed, 50)
    with pytest.raises(CodecError, match="lz4"):
        decompress("lz4", compress("lz4", bytes(100)), 50)
    with pytest.raises(CodecError, match="decodes to 100 bytes, the header declares 150"):
        decompress("lz4", compress("lz4", bytes(100)), 150)


@pytest.mark.parametrize(("change", "message"), [
    ({"codec": "lz4"}, "wire_bytes: required with codec lz4"),
    ({"wire_bytes": 10}, "wire_bytes: given without a codec"),
    ({"codec": "none"}, "codec: omit it for a raw payload"),
    ({"codec": "brotli", "wire_bytes": 1}, "codec"),
])
def test_header_encoding_fields_are_validated(change: dict[str, object], message: str) -> None:
    header, payload = _split(_encoded(torch.ones(1, 1, 2, 2), WireFormat()))
    header.update(change)
    with pytest.raises(FrameError, match=message):
        decode_frame(_join(header, payload))


def test_float16_only_for_float32_tensors() -> None:
    ints = torch.ones(1, 1, 2, 2, dtype=torch.int32)
    header, payload = _split(_encoded(ints, WireFormat("none", "float16")))
    assert "wire_dtype" not in header  # asked, but an int tensor travels as it is
    header["wire_dtype"] = "float16"
    with pytest.raises(FrameError, match="float16 carries only a float32 tensor, not int32"):
        decode_frame(_join(header, payload))
