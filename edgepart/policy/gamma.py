"""Per-parameter compute delay γ: an EWMA over measured compute times, fed by whoever computes.

AR-MDI (seed 001 eq. 1) allocates parameters in proportion to 1/γ_n, where γ_n
is worker n's compute seconds per parameter, measured by the worker and shared
with the others. The estimator is a value: `observed` returns a new one, so the
simulator and the data plane can keep, copy and publish it without locks.

[R] Worker n's γ for source j is measured on the share it runs for j. Layers
differ in seconds per parameter (MobileNetV2's early layers compute a lot with
few weights, its classifier the opposite), so the measured γ of a share moves
the next allocation: the fixed point of ρ_n ∝ 1/γ_n with γ_n = T_n / P_n is
T_n equal for every worker (each share takes the same time), which is what
AR-MDI's proportional rule aims for. A share without parameters (pooling,
flatten) says nothing about γ and is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from edgepart.policy.errors import PolicyError


@dataclass(frozen=True)
class GammaEstimator:
    """γ in seconds per parameter: starts at a prior, then γ ← (1 − smoothing)·γ + smoothing·(seconds / params)."""

    value: float  # current estimate, seconds per parameter
    smoothing: float = 0.2  # weight of each new measurement (EWMA α)
    samples: int = 0

    def __post_init__(self) -> None:
        if not (self.value > 0 and math.isfinite(self.value)):
            raise PolicyError(f"gamma.value: must be finite and > 0, got {self.value}")
        if not 0 < self.smoothing <= 1:
            raise PolicyError(f"gamma.smoothing: must be in (0, 1], got {self.smoothing}")

    @staticmethod
    def prior(seconds: float, params: int, smoothing: float = 0.2) -> GammaEstimator:
        """Start from one whole-model measurement (or prediction): `seconds` for `params` parameters."""
        if params <= 0:
            raise PolicyError(f"gamma prior: params must be > 0, got {params}")
        return GammaEstimator(seconds / params, smoothing)

    def observed(self, seconds: float, params: int) -> GammaEstimator:
        """The estimate after one compute of `params` parameters that took `seconds`."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise PolicyError(f"gamma observation: seconds must be finite and >= 0, got {seconds}")
        if params <= 0 or seconds == 0:
            return self
        sample = seconds / params
        return replace(self, value=(1 - self.smoothing) * self.value + self.smoothing * sample,
                       samples=self.samples + 1)
