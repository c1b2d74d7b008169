"""Fast kernels by default, exact on request: the deployed answer against the whole model run with the same
kernels (executor.check_deployed), and the kernels a process computes with."""

from __future__ import annotations

import math

import pytest
import torch

from edgepart.executor import DEPLOYED_RTOL, check_deployed, kernels_in_use, use_exact_kernels


def _reference() -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)) * 3


def test_fast_kernels_pass_within_the_relative_tolerance_and_fail_beyond_it() -> None:
    expected = _reference()
    peak = float(expected.abs().max())
    within, beyond = expected.clone(), expected.clone()
    within[0, 3, 2, 2] += 0.5 * DEPLOYED_RTOL * peak
    beyond[0, 3, 2, 2] += 2 * DEPLOYED_RTOL * peak
    ok = check_deployed(expected, within, exact_kernels=False)
    assert ok.passed and ok.rtol == DEPLOYED_RTOL
    assert ok.relative_error == pytest.approx(0.5 * DEPLOYED_RTOL, rel=1e-3)
    assert "relative error" in ok.describe() and "rtol 0.0001" in ok.describe()
    bad = check_deployed(expected, beyond, exact_kernels=False)
    assert not bad.passed and bad.relative_error == pytest.approx(2 * DEPLOYED_RTOL, rel=1e-3)
    assert check_deployed(expected, beyond, exact_kernels=False, rtol=1e-3).passed


def test_exact_kernels_require_the_same_bits() -> None:
    expected = _reference()
    assert check_deployed(expected, expected.clone(), exact_kernels=True).passed
    off = expected.clone()
    off[0, 0, 0, 0] = torch.nextafter(off[0, 0, 0, 0], torch.tensor(math.inf))  # one ulp
    result = check_deployed(expected, off, exact_kernels=True)
    assert not result.passed and result.rtol == 0 and "must be 0" in result.describe()
    assert check_deployed(expected, off, exact_kernels=False).passed  # well inside the fast tolerance


def test_a_wrong_shape_or_nan_never_passes() -> None:
    expected = _reference()
    assert not check_deployed(expected, expected[:, :8], exact_kernels=False).passed
    broken = expected.clone()
    broken[0, 1, 1, 1] = math.nan
    assert not check_deployed(expected, broken, exact_kernels=False).passed
    with pytest.raises(ValueError, match="rtol"):
        check_deployed(expected, expected, exact_kernels=False, rtol=-1)


def test_the_kernel_choice_is_what_the_process_computes_with() -> None:
    use_exact_kernels(True)
    assert kernels_in_use() == "exact" and not torch.backends.mkldnn.enabled
    use_exact_kernels(False)
    assert kernels_in_use() == "fast" and torch.backends.mkldnn.enabled
