"""The root of every error edgepart reports to a user (a CLI prints its message, no traceback).

    EdgepartError
    ├── GraphError, UnsupportedLayerError   the model cannot be traced or tiled
    ├── ModelLoadError, UnknownModelError   the model reference or its weights
    ├── GeometryError                       an impossible region request
    ├── PlanError, PlanBuildError           malformed or impossible plans
    ├── SpecError                           malformed cluster / deployment documents
    ├── PolicyError                         runtime policy inputs (γ, ring, scheduler name)
    └── ExecutionError                      a tile that cannot be computed
"""

from __future__ import annotations

from pydantic import ValidationError


class EdgepartError(Exception):
    """An error whose message is meant for the user: it names the field, layer or value at fault."""


def field_path(loc: tuple[int | str, ...]) -> str:
    """('stages', 0, 'partitions', 1, 'device') -> 'stages[0].partitions[1].device'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith("function-"):  # pydantic's validator names, not fields
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def explain_validation(err: ValidationError, most: int = 8) -> str:
    """One clause per problem, each naming the field: 'devices[1].memory: ...; stages: Field required'."""
    parts = [f"{field_path(tuple(item['loc']))}: {str(item['msg']).removeprefix('Value error, ')}"
             for item in err.errors()[:most]]
    if err.error_count() > most:
        parts.append(f"and {err.error_count() - most} more")
    return "; ".join(parts)
