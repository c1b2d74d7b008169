"""Names derived from user input, shared by the spec, the plan and the data plane (no dependencies)."""

from __future__ import annotations

import re

__all__ = ["default_model_id"]


def default_model_id(name: str) -> str:
    """A model id from a model reference: the zoo name, or the factory's name, as a DNS label."""
    text = name.rpartition(":")[2] if ":" in name else name
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:63].strip("-") or "model"
