"""Accuracy-aware data partitioning as local processes: `edgepart dse` and `edgepart up` of a variants deployment.

A variants deployment runs a dispatcher (the gateway's role in this mode, on
the master device) and one worker per device; the dispatcher's resource
manager chooses which variant each worker runs and splits every request's
images over them (`edgepart.partition_service.dispatcher`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgepart.spec import DNNDeployment

if TYPE_CHECKING:
    from edgepart.policy.variants_plan import Exploration

__all__ = ["dse_report", "exploration_table"]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def exploration_table(exploration: Exploration) -> str:
    """θ per device and variant, the Pareto front and the choice, as text."""
    family, problem, selection = exploration.family, exploration.problem, exploration.selection
    names = [v.name for v in family.variants]
    batch = exploration.batch
    lines = [f"family {family.name} ({len(names)} variants: {family.task}) on {len(problem.nodes)} devices; "
             f"target: {exploration.settings.target.describe() if exploration.settings.target else '-'}",
             "",
             "variant accuracy: " + ", ".join(f"{v.name} {v.accuracy.value:.4f} ({v.accuracy.kind})"
                                              for v in family.variants),
             "", f"θ, images/s (cost model, batches of {batch}):",
             _table(["device", *names], [[n.name, *(f"{t:.0f}" if t is not None else "-" for t in n.throughput)]
                                         for n in problem.nodes]),
             "",
             f"Pareto front: {len(exploration.front)} of {problem.configuration_count} configurations "
             f"({exploration.front.examined} partial ones examined, {exploration.dse_seconds * 1e3:.1f} ms)"]
    chosen = selection.assignment.choices
    rows = []
    for c in exploration.front.configurations:
        mark = "*" if c.choices == chosen else ""
        rows.append([mark, f"{c.score.throughput:.0f}", f"{c.score.accuracy:.4f}", f"{c.score.power_w:g}",
                     *((v or "off") for v in problem.describe(c.choices))])
    lines.append(_table(["", "images/s", "accuracy", "W", *(n.name for n in problem.nodes)], rows))
    total = sum(selection.assignment.weights)
    shares = ", ".join(f"{n.name}: {v or 'off'}" + (f" ({w / total:.1%})" if v else "")
                       for n, v, w in zip(problem.nodes, selection.variants, selection.assignment.weights,
                                          strict=True))
    lines += ["", f"chosen: {shares}",
              f"predicted {selection.throughput:.0f} images/s, accuracy {selection.accuracy:.4f}, "
              f"{selection.power_w:g} W; " + ("target met" if selection.feasible else selection.note)]
    return "\n".join(lines)


def dse_report(deployment: DNNDeployment, base: Path, *, as_json: bool = False) -> tuple[str, bool]:
    """What `edgepart dse` prints, and whether the target is met."""
    from edgepart.policy.variants_plan import explore, to_json

    exploration = explore(deployment.spec, base)
    text = to_json(exploration) if as_json else exploration_table(exploration)
    return text, exploration.selection.feasible
