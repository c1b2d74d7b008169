"""A plan as a picture (SVG, no dependencies): a device x time Gantt chart of one request and the
tile split of every stage over its output feature map.

The Gantt chart is the evaluator's idle-system timeline of the task graph
(`planner/evaluate.py`): per device, transfers it receives (light, top),
compute (solid, one colour per stage) and transfers it sends (dark, bottom).
Below it, each stage's output tensor is drawn as a rectangle (rows x cols
for spatial splits, channels for channel splits) with each task's region in
its device's colour (overlapping tiles show through).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from edgepart.graph.layer_graph import LayerGraph
from edgepart.plan import Plan
from edgepart.planner.cluster import Cluster
from edgepart.planner.evaluate import evaluate_plan

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")

_LEFT = 120
_WIDTH = 760
_ROW = 26


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str, opacity: float = 1.0) -> str:
    return (f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(w, 0.5):.2f}" height="{h:.2f}" fill="{fill}" '
            f'fill-opacity="{opacity}" stroke="#333" stroke-width="0.3"><title>{escape(title)}</title></rect>')


def _text(x: float, y: float, text: str, size: int = 11, anchor: str = "start") -> str:
    return (f'<text x="{x:.2f}" y="{y:.2f}" font-size="{size}" font-family="sans-serif" '
            f'text-anchor="{anchor}">{escape(text)}</text>')


def plan_svg(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster) -> str:
    """The SVG document for `plan` on `cluster`."""
    evaluation = evaluate_plan(plan, graphs, cluster)
    by_model = {plan.models[0].id: graphs} if isinstance(graphs, LayerGraph) else dict(graphs)
    sched, cost = evaluation.schedule, evaluation.graph
    used = set(plan.devices) | {cluster.master}
    devices = [n for n in cluster.names if n in used]
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(cluster.names)}
    views = plan.stage_view()
    stage_of = {t.id: v.index for v in views for t in v.tasks}
    total = max(evaluation.latency_s, 1e-12)
    scale = _WIDTH / total
    out: list[str] = []
    y0 = 40
    names = ", ".join(m.name for m in plan.models)
    out.append(_text(10, 20, f"{names}: {plan.solver} plan, {len(plan.compute_tasks)} tasks, "
                             f"latency {evaluation.latency_s * 1e3:.2f} ms, "
                             f"throughput {evaluation.throughput_per_s:.2f}/s", 13))
    rows = {name: y0 + i * _ROW for i, name in enumerate(devices)}
    for name, y in rows.items():
        label = name + (" (master)" if name == plan.master else "")
        out.append(_text(_LEFT - 6, y + _ROW * 0.65, label, anchor="end"))
        out.append(f'<line x1="{_LEFT}" y1="{y + _ROW:.2f}" x2="{_LEFT + _WIDTH}" y2="{y + _ROW:.2f}" '
                   'stroke="#ddd" stroke-width="0.5"/>')
    for transfer in sched.transfers:
        if transfer.end_s <= transfer.start_s:
            continue
        edge = cost.edges[transfer.edge]
        what = "input" if edge.src < 0 else cost.tasks[edge.src].id
        to = "output" if edge.dst < 0 else cost.tasks[edge.dst].id
        a, b = transfer.start_s, transfer.end_s
        label = f"{what} -> {to} ({transfer.source} -> {transfer.target}): {(b - a) * 1e3:.2f} ms"
        out.append(_rect(_LEFT + a * scale, rows[transfer.source] + _ROW * 0.78, (b - a) * scale, _ROW * 0.2,
                         "#777", label))
        out.append(_rect(_LEFT + a * scale, rows[transfer.target] + 3, (b - a) * scale, _ROW * 0.25, "#bbb", label))
    for i, task in enumerate(plan.tasks):
        if task.relay:
            continue
        a, b = sched.start[i], sched.end[i]
        fill = PALETTE[stage_of.get(task.id, 0) % len(PALETTE)]
        out.append(_rect(_LEFT + a * scale, rows[task.device] + _ROW * 0.3, (b - a) * scale, _ROW * 0.45, fill,
                         f"{task.id} ({task.model} layers {task.start}-{task.stop}) on {task.device}: compute "
                         f"{(b - a) * 1e3:.2f} ms"))
    axis_y = y0 + len(devices) * _ROW + 18
    for k in range(6):
        t = total * k / 5
        out.append(_text(_LEFT + t * scale, axis_y, f"{t * 1e3:.1f} ms", 10, "middle"))
    # tiles of every stage's output
    tiles_y = axis_y + 30
    out.append(_text(10, tiles_y - 8, "output regions of each stage's tasks (colour = device)", 12))
    box = 110
    per_row = max(1, (_LEFT + _WIDTH) // (box + 20))
    height_used = float(tiles_y)
    for view in views:
        s = view.index
        gx = 10 + (s % per_row) * (box + 20)
        gy = float(tiles_y + (s // per_row) * (box + 40))
        shape = by_model[view.model].shape_at(view.stop)
        out.append(_text(gx, gy + box + 14, f"s{s} {view.model} {view.kind} {'x'.join(map(str, shape))}", 9))
        channel_split = len({t.output.channels for t in view.tasks}) > 1
        for task in view.tasks:
            region = task.output
            if len(shape) == 3 and not channel_split and len(region.dims) == 3:
                (r0, r1), (c0, c1) = region.rows, region.cols
                left, top = gx + box * c0 / shape[2], gy + box * r0 / shape[1]
                width, height = box * (c1 - c0) / shape[2], box * (r1 - r0) / shape[1]
            else:
                first, last = region.channels
                left, top = gx + box * first / shape[0], gy
                width, height = box * (last - first) / shape[0], float(box)
            out.append(_rect(left, top, width, height, colour[task.device], f"{task.id} on {task.device}: {region}",
                             0.85 if len(view.tasks) == 1 else 0.6))
        height_used = gy + box + 24
    legend_y = height_used + 16
    for i, name in enumerate(devices):
        out.append(_rect(10 + i * 110, legend_y, 12, 12, colour[name], name))
        out.append(_text(26 + i * 110, legend_y + 10, name, 10))
    doc_height = legend_y + 30
    doc_width = _LEFT + _WIDTH + 30
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{doc_width}" height="{doc_height:.0f}" '
            f'viewBox="0 0 {doc_width} {doc_height:.0f}">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(out) + "\n</svg>\n")


def line_chart_svg(title: str, x_label: str, y_label: str, series: dict[str, list[tuple[float, float]]],
                   log_y: bool = False, width: int = 560, height: int = 340) -> str:
    """A small line chart (one polyline per series) for benchmark results."""
    import math

    left, right, top, bottom = 60, 150, 30, 45
    points = [p for values in series.values() for p in values]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>\n'
    xs = [p[0] for p in points]
    ys = [math.log10(p[1]) if log_y else p[1] for p in points if not log_y or p[1] > 0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(ys), max(ys)) if log_y else (min(0.0, min(ys)), max(ys))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        value = math.log10(y) if log_y else y
        return top + plot_h - (value - y0) / (y1 - y0) * plot_h

    out = ['<rect width="100%" height="100%" fill="white"/>', _text(left, 18, title, 13),
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
           _text(left + plot_w / 2, height - 8, x_label, 11, "middle"),
           _text(12, top + plot_h / 2, y_label, 11)]
    for k in range(5):
        value = y0 + (y1 - y0) * k / 4
        label = f"{10 ** value:.3g}" if log_y else f"{value:.3g}"
        y = top + plot_h - plot_h * k / 4
        out.append(_text(left - 4, y + 4, label, 9, "end"))
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
    for x in sorted(set(xs)):
        out.append(_text(sx(x), top + plot_h + 14, f"{x:g}", 9, "middle"))
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        shown = [(x, y) for x, y in sorted(values) if not log_y or y > 0]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in shown:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>')
        out.append(f'<rect x="{left + plot_w + 12}" y="{top + i * 18}" width="10" height="10" fill="{colour}"/>')
        out.append(_text(left + plot_w + 26, top + i * 18 + 9, name, 10))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">\n' + "\n".join(out) + "\n</svg>\n")
