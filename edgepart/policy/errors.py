"""The one error type of the runtime policies."""

from __future__ import annotations

from edgepart.errors import EdgepartError


class PolicyError(EdgepartError, ValueError):
    """A policy input that cannot be used (bad γ, unknown source or worker, unknown scheduler); names the field."""
