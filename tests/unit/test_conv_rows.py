"""Large native convolutions run in row chunks (small warm scratch) and give bit-for-bit one call's answer
(chunks keep at least MIN_CHUNK_OUTPUTS output positions: the BLAS rounds very short GEMMs differently)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from edgepart.executor import ONEDNN_MIN_OUTPUTS, conv2d_rows, use_exact_kernels


@pytest.fixture(autouse=True)
def exact_kernels() -> Iterator[None]:
    use_exact_kernels(True)
    yield
    use_exact_kernels(True)


@pytest.mark.parametrize(("cin", "cout", "rows", "cols", "kernel", "stride", "dilation"), [
    (8, 16, 97, 75, (3, 3), (1, 1), (1, 1)),
    (8, 16, 140, 131, (3, 3), (2, 2), (1, 1)),
    (4, 16, 133, 96, (5, 3), (2, 1), (2, 1)),
    (3, 8, 230, 90, (7, 7), (2, 2), (1, 1)),
    (16, 8, 125, 125, (1, 1), (2, 2), (1, 1)),
])
@pytest.mark.parametrize("scratch", [1, 4096, 100_000])
def test_chunked_rows_equal_one_call_exactly(cin: int, cout: int, rows: int, cols: int, kernel: tuple[int, int],
                                             stride: tuple[int, int], dilation: tuple[int, int],
                                             scratch: int) -> None:
    generator = torch.Generator().manual_seed(cin * rows + scratch)
    x = torch.randn(2, cin, rows, cols, generator=generator)
    weight = torch.randn(cout, cin, *kernel, generator=generator)
    bias = torch.randn(cout, generator=generator)
    expected = F.conv2d(x, weight, bias, stride, 0, dilation)
    got = conv2d_rows(x, weight, bias, stride, dilation, scratch_bytes=scratch)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_other_shapes_are_within_rounding() -> None:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 133, 96, generator=generator)
    weight, bias = torch.randn(6, 4, 5, 3, generator=generator), torch.randn(6, generator=generator)
    expected = F.conv2d(x, weight, bias, (2, 1), 0, (2, 1))
    torch.testing.assert_close(conv2d_rows(x, weight, bias, (2, 1), (2, 1), scratch_bytes=1), expected,
                               rtol=1e-6, atol=1e-5)


def test_small_grouped_and_onednn_convolutions_are_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = F.conv2d

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "conv2d", counting)
    x, weight = torch.randn(1, 8, 40, 40), torch.randn(8, 8, 3, 3)
    conv2d_rows(x, weight, None, (1, 1), (1, 1), scratch_bytes=1)
    assert len(calls) == 2  # chunks of at least MIN_CHUNK_OUTPUTS positions: 27 rows of 38, then 11
    calls.clear()
    conv2d_rows(x, torch.randn(8, 2, 3, 3), None, (1, 1), (1, 1), groups=4, scratch_bytes=1)
    conv2d_rows(x, weight, None, (1, 1), (1, 1))  # 38 rows x 8·9·38 floats: far under the default limit
    conv2d_rows(torch.randn(1, 8, 20, 20), weight, None, (1, 1), (1, 1), scratch_bytes=1)  # too few outputs
    use_exact_kernels(False)
    conv2d_rows(x, weight, None, (1, 1), (1, 1), scratch_bytes=1)
    assert len(calls) == 4


def test_fast_kernels_use_onednn_on_large_maps_and_native_kernels_on_small_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    onednn: list[bool] = []
    real = F.conv2d

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        onednn.append(torch.backends.mkldnn.enabled)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "conv2d", recording)
    use_exact_kernels(False)
    weight = torch.randn(16, 8, 3, 3)
    large = torch.randn(1, 8, 2 + ONEDNN_MIN_OUTPUTS, 3)  # ONEDNN_MIN_OUTPUTS rows of 1 column
    conv2d_rows(large, weight, None, (1, 1), (1, 1))
    small = torch.randn(1, 8, 1 + ONEDNN_MIN_OUTPUTS, 3)  # one output position fewer
    out = conv2d_rows(small, weight, None, (1, 1), (1, 1))
    conv2d_rows(small, torch.randn(8, 1, 3, 3), None, (1, 1), (1, 1), groups=8)  # depthwise: oneDNN's is faster
    assert onednn == [True, False, True] and torch.backends.mkldnn.enabled  # the choice is back after the call
    use_exact_kernels(True)
    assert torch.equal(out, real(small, weight, None, (1, 1), 0, (1, 1)))  # the native kernels' answer
    conv2d_rows(large, weight, None, (1, 1), (1, 1))
    assert onednn[-1] is False  # exact kernels: never oneDNN
