"""The root of every error edgepart reports to a user (a CLI prints its message, no traceback).

    EdgepartError
    ├── GraphError, UnsupportedLayerError   the model cannot be traced or tiled
    ├── ModelLoadError, UnknownModelError   the model reference or its weights
    ├── GeometryError                       an impossible region request
    ├── PlanError, PlanBuildError           malformed or impossible plans
    ├── SpecError                           malformed cluster / deployment documents
    └── ExecutionError                      a tile that cannot be computed
"""

from __future__ import annotations


class EdgepartError(Exception):
    """An error whose message is meant for the user: it names the field, layer or value at fault."""
