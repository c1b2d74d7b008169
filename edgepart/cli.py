"""`edgepart` command line: a thin edge over the library. Each command parses, calls, prints."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from edgepart.errors import EdgepartError

app = typer.Typer(
    name="edgepart",
    help="Split one CNN across many small edge devices: plan, verify, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print user-facing errors as one line naming the problem, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except EdgepartError as err:
            raise fail(str(err)) from None

    return wrapper


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_flops(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


# ------------------------------------------------------------------ shared options

ModelArg = Annotated[str, typer.Argument(help="Zoo name (see `edgepart models`), package.module:factory, "
                                              "or path/to/file.py:factory.")]
InputShapeOpt = Annotated[str | None, typer.Option("--input-shape", help="N,C,H,W (required outside the zoo).")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="safetensors file with the model's weights.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the deterministic weights when no file is given.")]


def model_ref(model: str, input_shape: str | None, weights: Path | None = None, seed: int = 0) -> Any:
    from edgepart.graph.loader import ModelRef, input_shape_of, parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape else None
    ref = ModelRef(model, shape, str(weights) if weights else None, seed)
    return ModelRef(model, input_shape_of(ref), ref.weights, seed)


# ------------------------------------------------------------------ models / inspect


@app.command("models")
@user_errors
def models_command() -> None:
    """List the model zoo."""
    from edgepart.graph.loader import ModelRef, load_graph
    from edgepart.graph.zoo import ZOO

    rows = []
    for name, entry in ZOO.items():
        graph = load_graph(ModelRef(name))
        rows.append([name, "x".join(map(str, entry.input_shape)), human_flops(graph.flops()) + "FLOP",
                     human_bytes(graph.weight_bytes()), len(graph.units), entry.description])
    typer.echo(format_table(["model", "input", "compute", "weights", "units", "description"], rows, right=(2, 3, 4)))


@app.command("inspect")
@user_errors
def inspect_command(model: ModelArg, input_shape: InputShapeOpt = None) -> None:
    """Print the layer table (op, kernel, stride, padding, shapes, FLOPs, bytes) and the cut points."""
    from edgepart.graph.loader import load_graph

    ref = model_ref(model, input_shape)
    graph = load_graph(ref)
    unit_of = {u.start: i for i, u in enumerate(graph.units)}
    rows = []
    for layer in graph.layers:
        w = layer.spec.window
        rows.append([
            layer.index, unit_of.get(layer.index, ""), layer.name, layer.op.value,
            "x".join(map(str, w.kernel)) if w else "", "x".join(map(str, w.stride)) if w else "",
            ",".join(map(str, w.padding)) if w else "", "x".join(map(str, w.dilation)) if w else "",
            layer.spec.groups if layer.op.value == "conv" else "",
            "x".join(map(str, layer.out_shape)), human_flops(layer.flops), human_bytes(layer.weight_bytes),
            human_bytes(layer.out_bytes * graph.batch), "cut" if graph.is_cut(layer.index + 1) else "",
        ])
    typer.echo(f"{graph.model_name}: input {'x'.join(map(str, graph.input_shape))}, {len(graph)} layers, "
               f"{len(graph.units)} units, {human_flops(graph.flops())}FLOP, {human_bytes(graph.weight_bytes())} "
               f"weights; the first {graph.longest_fusable_prefix()} units can be fused")
    typer.echo(format_table(
        ["#", "unit", "layer", "op", "kernel", "stride", "pad t,b,l,r", "dil", "groups", "output", "FLOPs",
         "weights", "out bytes", "after"], rows, right=(0, 1, 10, 11, 12)))
    typer.echo(f"\ncut points (positions where one tensor crosses): {', '.join(map(str, graph.cut_points))}")


# ------------------------------------------------------------------ plan / verify

SolverOpt = Annotated[str, typer.Option("--solver", help="single | layerwise | ftp-grid")]
DevicesOpt = Annotated[int, typer.Option("--devices", min=1, help="Number of devices (dev-0, dev-1, ...).")]
GridOpt = Annotated[str, typer.Option("--grid", help="ftp-grid: ROWSxCOLS tiles over the fused layers.")]
FusedOpt = Annotated[int | None, typer.Option("--fused-layers", help="ftp-grid: fuse the first F units "
                                                                    "(default: the longest fusable prefix).")]
SplitOpt = Annotated[str, typer.Option("--split", help="layerwise: auto | channels | rows.")]


def build_plan(graph: Any, ref: Any, devices: int, solver: str, grid: str, fused_layers: int | None,
               split: str) -> Any:
    from edgepart.planner.builders import (
        PlanBuildError,
        build_ftp_grid,
        build_layerwise,
        build_single,
        parse_grid,
    )

    names = [f"dev-{i}" for i in range(devices)]
    if solver == "single":
        return build_single(graph, ref, names)
    if solver == "layerwise":
        return build_layerwise(graph, ref, names, split=split)
    if solver == "ftp-grid":
        return build_ftp_grid(graph, ref, names, parse_grid(grid), fused_layers)
    raise PlanBuildError(f"--solver: unknown solver {solver!r} (choose single, layerwise or ftp-grid)")


def print_plan(plan: Any) -> None:
    rows = []
    for stage in plan.stages:
        for part in stage.partitions:
            rows.append([stage.index, stage.kind, stage.split, f"[{stage.start},{stage.stop})",
                         f"{stage.first_layer}..{stage.last_layer}", part.id, part.device,
                         str(part.output_region), str(part.input_region)])
    typer.echo(format_table(["stage", "kind", "split", "layers", "names", "partition", "device", "output region",
                             "input region"], rows))
    if plan.predicted is not None:
        typer.echo(f"predicted latency {plan.predicted.latency_s * 1e3:.1f} ms, "
                   f"throughput {plan.predicted.throughput_per_s:.2f}/s")


@app.command("plan")
@user_errors
def plan_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write plan.json.")] = Path("plan.json"),
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    devices: DevicesOpt = 4,
    solver: SolverOpt = "ftp-grid",
    grid: GridOpt = "3x3",
    fused_layers: FusedOpt = None,
    split: SplitOpt = "auto",
) -> None:
    """Split MODEL across devices and write the plan as JSON."""
    from edgepart.graph.loader import load_graph
    from edgepart.plan import save_plan

    ref = model_ref(model, input_shape, weights, seed)
    graph = load_graph(ref)
    plan = build_plan(graph, ref, devices, solver, grid, fused_layers, split)
    save_plan(plan, output)
    print_plan(plan)
    typer.echo(f"wrote {output} ({len(plan.stages)} stages, {len(plan.partitions)} partitions)")


@app.command("verify")
@user_errors
def verify_command(
    model: ModelArg,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="A plan.json to verify.")] = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    devices: DevicesOpt = 4,
    solver: SolverOpt = "ftp-grid",
    grid: GridOpt = "3x3",
    fused_layers: FusedOpt = None,
    split: SplitOpt = "auto",
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-4,
    fast_kernels: Annotated[bool, typer.Option("--fast-kernels", help="Use oneDNN convolutions (faster, "
                                                                    "not bit-exact across tile sizes).")] = False,
) -> None:
    """Run a plan in one process with sliced modules and compare with the whole model.

    Exits 0 iff the outputs are allclose(atol, rtol).
    """
    import torch

    from edgepart.executor import Executor, compare, use_exact_kernels
    from edgepart.graph.loader import load_model, trace_ref
    from edgepart.plan import check_plan, load_plan

    use_exact_kernels(not fast_kernels)
    ref = model_ref(model, input_shape, weights, seed)
    if plan_file is not None:
        plan = load_plan(plan_file)
    module = load_model(ref)
    gm, graph = trace_ref(ref, module)
    if plan_file is None:
        plan = build_plan(graph, ref, devices, solver, grid, fused_layers, split)
    check_plan(plan, graph)
    executor = Executor(gm, graph)
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(seed))
    expected = executor.run_whole(x)
    actual = executor.run_plan(plan, x)
    result = compare(expected, actual, atol, rtol)
    typer.echo(f"{graph.model_name}: {plan.solver} plan, {len(plan.stages)} stages, {len(plan.partitions)} "
               f"partitions on {len(plan.devices)} devices; output {'x'.join(map(str, result.output_shape))}")
    typer.echo(f"max abs diff {result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g} "
               f"(atol {atol:g}, rtol {rtol:g})")
    if not result.allclose:
        raise fail("the split model's output differs from the whole model's", code=1)
    typer.echo("OK: the split output equals the whole model's")


# ------------------------------------------------------------------ demo


@app.command("demo")
@user_errors
def demo_command() -> None:
    """The main job end to end: plan VGG-16 and YOLOv2 as fused-tile grids and verify them exactly."""
    for model, grid in (("vgg16", "3x3"), ("yolov2", "3x3")):
        typer.echo(f"\n$ edgepart plan {model} --devices 4 --solver ftp-grid --grid {grid} -o out/{model}.json")
        Path("out").mkdir(exist_ok=True)
        plan_command(model, Path(f"out/{model}.json"), grid=grid)
        typer.echo(f"\n$ edgepart verify {model} --plan out/{model}.json")
        verify_command(model, Path(f"out/{model}.json"))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
