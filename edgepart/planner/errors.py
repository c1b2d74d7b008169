"""Errors the planner reports to users."""

from __future__ import annotations

from edgepart.errors import EdgepartError


class PlanningError(EdgepartError, ValueError):
    """No plan can be produced: unknown solver or option, infeasible memory, a model the solver cannot split.

    The message names the cause (the solver, the option, the device and its memory).
    """
