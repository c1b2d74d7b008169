"""What Jobs hand back to the operator: JSON printed between marker lines of a log, kept in labelled ConfigMaps.

Profiling Jobs (device profiles) and tracing Jobs (layer graphs of models outside the zoo) work alike; both
parse their data the same way, with their own parser and error type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

Parsed = TypeVar("Parsed")

__all__ = ["between_markers", "parse_config_maps"]


def between_markers(log: str, begin_marker: str, end_marker: str, what: str, source: str,
                    error: Callable[[str], Exception]) -> str:
    """The text between the last `begin_marker` and the `end_marker` after it (a Job may retry and print twice)."""
    begin = log.rfind(begin_marker)
    end = log.rfind(end_marker)
    if begin < 0 or end < begin:
        raise error(f"{source}: no {what} between {begin_marker!r} and {end_marker!r}")
    return log[begin + len(begin_marker): end].strip()


def parse_config_maps(objects: Sequence[Mapping[str, Any]], key_of: Callable[[Mapping[str, Any]], str | None],
                      data_key: str, parse: Callable[[str, str], Parsed], error: type[Exception]
                      ) -> tuple[dict[str, Parsed], dict[str, str]]:
    """Parse `data[data_key]` of every ConfigMap that `key_of` names (None: not one of ours).

    Returns what parsed by key, and why the others did not (a key that parsed in another ConfigMap is no error).
    """
    parsed: dict[str, Parsed] = {}
    errors: dict[str, str] = {}
    for obj in objects:
        key = key_of(obj)
        if key is None:
            continue
        source = f"ConfigMap {(obj.get('metadata') or {}).get('name')}"
        text = (obj.get("data") or {}).get(data_key)
        if not isinstance(text, str):
            errors[key] = f"{source}: no data key {data_key!r}"
            continue
        try:
            parsed[key] = parse(text, source)
        except error as err:
            errors[key] = str(err)
    return parsed, {k: v for k, v in errors.items() if k not in parsed}
