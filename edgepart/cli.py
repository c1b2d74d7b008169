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


@app.command("trace")
@user_errors
def trace_command(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the graph JSON here (default: "
                                                                       "stdout).")] = None,
    markers: Annotated[bool, typer.Option("--markers", help="Print the graph as one line of JSON between "
                                                            "marker lines (what the operator's tracing Job "
                                                            "prints and the operator reads).")] = False,
) -> None:
    """Trace MODEL (on the meta device: no weights) and write its layer graph as JSON.

    This runs the model's code. The operator never does for models outside the zoo: it plans from this
    JSON (a tracing Job runs this command in the image); `edgepart render --graph` takes it too.
    """
    from edgepart.graph.loader import load_graph
    from edgepart.graph.serial import GRAPH_BEGIN, GRAPH_END, graph_to_json

    graph = load_graph(model_ref(model, input_shape))
    if markers:
        typer.echo(f"{GRAPH_BEGIN}\n{graph_to_json(graph)}\n{GRAPH_END}")
        return
    text = graph_to_json(graph, indent=1) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"wrote {output} ({len(graph)} layers, {len(graph.units)} units)", err=True)


# ------------------------------------------------------------------ plan / verify

SolverOpt = Annotated[str, typer.Option("--solver", help="auto | single | layerwise | ftp-grid | fused-dp | "
                                                          "pipeline-dp | brute-force; several models at once: "
                                                          "mgp-memetic | mgp-pso | lo-pso | heft (`edgepart "
                                                          "solvers` describes each and its options)")]
ClusterOpt = Annotated[Path | None, typer.Option("--cluster", help="Cluster YAML: devices (profile or speed, "
                                                                   "memory), network, master. Default: --devices "
                                                                   "identical reference devices at --bandwidth.")]
ObjectiveOpt = Annotated[str, typer.Option("--objective", help="latency | throughput")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-O", help="Solver option KEY=VALUE "
                                                                            "(repeatable), e.g. -O max_fused=6.")]
CompressionOpt = Annotated[str, typer.Option("--compression", help="off | auto | lz4 | zstd: lossless "
                                                                  "compression of activations, chosen per link "
                                                                  "where it pays (auto: the cheaper codec).")]
WireDtypeOpt = Annotated[str, typer.Option("--wire-dtype", help="float32 | float16: float16 halves the bytes on "
                                                               "the wire (lossy; verify reports the error).")]
BandwidthOpt = Annotated[str, typer.Option("--bandwidth", help="Link bandwidth of the default cluster "
                                                               "(without --cluster), e.g. 100Mbps.")]
DevicesOpt = Annotated[int, typer.Option("--devices", min=1, help="Number of devices (dev-0, dev-1, ...).")]
GridOpt = Annotated[str, typer.Option("--grid", help="ftp-grid: ROWSxCOLS tiles over the fused layers.")]
FusedOpt = Annotated[int | None, typer.Option("--fused-layers", help="ftp-grid: fuse the first F units "
                                                                    "(default: the longest fusable prefix).")]
SplitOpt = Annotated[str, typer.Option("--split", help="layerwise: auto | channels | rows.")]


def load_cluster_option(cluster: Path | None, devices: int, bandwidth: str = "100Mbps") -> Any:
    """The --cluster file, or `devices` identical reference devices dev-0, dev-1, ... (dev-0 is the master)."""
    from edgepart.planner.cluster import Cluster, load_cluster_file

    if cluster is not None:
        return load_cluster_file(cluster)
    try:
        return Cluster.homogeneous(devices, bandwidth=bandwidth, prefix="dev-")
    except ValueError as err:
        raise fail(f"--bandwidth: {err}") from None


def build_plan(graph: Any, ref: Any, devices: int, solver: str, grid: str, fused_layers: int | None,
               split: str, *, cluster: Any = None, objective: str = "latency",
               options: Sequence[str] | None = None, compression: str = "off", wire_dtype: str = "float32") -> Any:
    """Plan with a registered solver; --grid/--fused-layers/--split feed ftp-grid and layerwise."""
    from edgepart.planner.codec_cost import WireSettings
    from edgepart.planner.registry import parse_options, solve

    if compression not in ("off", "auto", "lz4", "zstd"):
        raise fail(f"--compression {compression!r}: expected off, auto, lz4 or zstd")
    if wire_dtype not in ("float32", "float16"):
        raise fail(f"--wire-dtype {wire_dtype!r}: expected float32 or float16")
    wire = WireSettings(compression=compression, wire_dtype=wire_dtype)  # type: ignore[arg-type]

    opts = parse_options(solver, list(options or []))  # unknown solvers and options fail here, by name
    if solver == "ftp-grid":
        opts.setdefault("grid", grid)
        if fused_layers is not None:
            opts.setdefault("fused_layers", fused_layers)
    if solver == "layerwise":
        opts.setdefault("split", split)
    target = cluster if cluster is not None else load_cluster_option(None, devices)
    return solve(graph, ref, target, objective, solver, wire=wire, **opts)  # type: ignore[arg-type]


def print_plan(plan: Any) -> None:
    """The tasks grouped by stage (a derived view), then the predicted costs."""
    several = len(plan.models) > 1
    timing = {t.id: t for t in plan.predicted.tasks} if plan.predicted is not None else {}
    rows = []
    for view in plan.stage_view():
        for task in view.tasks:
            when = timing.get(task.id)
            rows.append([*([view.model] if several else []), view.index, view.kind, f"[{task.start},{task.stop})",
                         f"{task.first_layer}..{task.last_layer}", task.id, task.device, str(task.output),
                         ", ".join(f"{i.source}:{i.region}" for i in task.inputs),
                         f"{when.start_s * 1e3:.1f}-{when.end_s * 1e3:.1f}" if when else ""])
    relays = [t for t in plan.tasks if t.relay]
    typer.echo(format_table([*(["model"] if several else []), "stage", "kind", "layers", "names", "task", "device",
                             "output region", "reads (from:region)", "compute ms"], rows))
    if relays:
        typer.echo("relays (gather and forward a whole tensor): "
                   + ", ".join(f"{t.id} on {t.device} at cut {t.start}" for t in relays))
    if plan.predicted is not None:
        if plan.predicted.stages:
            views = plan.stage_view()
            costs = [[c.index, views[c.index].kind, ",".join(views[c.index].devices),
                      f"{c.scatter_s * 1e3:.2f}", f"{c.compute_s * 1e3:.2f}", f"{c.gather_s * 1e3:.2f}",
                      f"{c.time_s * 1e3:.2f}"] for c in plan.predicted.stages if c.index < len(views)]
            typer.echo("\n" + format_table(["stage", "kind", "devices", "scatter ms", "compute ms", "gather ms",
                                             "stage ms"], costs, right=(3, 4, 5, 6)))
        per_model = "" if not several else " (" + ", ".join(
            f"{m} {v * 1e3:.1f} ms" for m, v in plan.predicted.models.items()) + ")"
        typer.echo(f"predicted latency {plan.predicted.latency_s * 1e3:.1f} ms{per_model}, "
                   f"throughput {plan.predicted.throughput_per_s:.2f}/s")
    if isinstance(plan.meta.get("summary"), str):  # what a solver says of its own search (partial offloading)
        typer.echo(plan.meta["summary"])


def is_deployment_file(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) and Path(text).is_file()


def plan_graphs(plan: Any) -> dict[str, Any]:
    """Each model's layer graph (traced on the meta device)."""
    from edgepart.graph.loader import load_graph

    return {m.id: load_graph(m.ref) for m in plan.models}


@app.command("plan")
@user_errors
def plan_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write plan.json.")] = Path("plan.json"),
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    devices: DevicesOpt = 4,
    solver: SolverOpt = "auto",
    grid: GridOpt = "3x3",
    fused_layers: FusedOpt = None,
    split: SplitOpt = "auto",
    cluster: ClusterOpt = None,
    objective: ObjectiveOpt = "latency",
    option: OptionOpt = None,
    bandwidth: BandwidthOpt = "100Mbps",
    compression: CompressionOpt = "off",
    wire_dtype: WireDtypeOpt = "float32",
    svg: Annotated[Path | None, typer.Option("--svg", help="Also draw the plan: a device x time Gantt chart "
                                                           "and the tile split of every stage.")] = None,
) -> None:
    """Split MODEL across devices and write the plan (a task graph) as JSON, with predicted costs.

    MODEL may also be a DNNDeployment file: its models (one or several), devices, network, objective,
    solver and options are planned (command-line options do not apply then).
    """
    from edgepart.graph.loader import load_graph
    from edgepart.plan import save_plan

    if is_deployment_file(model):
        from edgepart.planner.cluster import cluster_from_spec
        from edgepart.runtime.planning import plan_deployment
        from edgepart.spec import load_deployment

        deployment = load_deployment(model)
        planned = plan_deployment(deployment.spec, base=Path.cwd())
        plan, graphs = planned.plan, planned.graphs
        target = cluster_from_spec(deployment.spec.cluster(), base_dir=Path.cwd())
    else:
        ref = model_ref(model, input_shape, weights, seed)
        graph = load_graph(ref)
        target = load_cluster_option(cluster, devices, bandwidth)
        plan = build_plan(graph, ref, devices, solver, grid, fused_layers, split, cluster=target,
                          objective=objective, options=option, compression=compression, wire_dtype=wire_dtype)
        graphs = {plan.models[0].id: graph}
    save_plan(plan, output)
    print_plan(plan)
    typer.echo(f"wrote {output} ({len(plan.models)} model{'s' if len(plan.models) > 1 else ''}, "
               f"{len(plan.compute_tasks)} tasks)")
    if svg is not None:
        from edgepart.sim.draw import plan_svg

        svg.write_text(plan_svg(plan, graphs, target))
        typer.echo(f"wrote {svg}")


@app.command("verify")
@user_errors
def verify_command(
    model: Annotated[str | None, typer.Argument(help="Zoo name, package.module:factory or path/to/file.py:factory "
                                                     "(default with --plan: every model the plan names).")] = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="A plan.json to verify.")] = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    devices: DevicesOpt = 4,
    solver: SolverOpt = "auto",
    grid: GridOpt = "3x3",
    fused_layers: FusedOpt = None,
    split: SplitOpt = "auto",
    cluster: ClusterOpt = None,
    objective: ObjectiveOpt = "latency",
    option: OptionOpt = None,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-4,
    compression: CompressionOpt = "off",
    wire_dtype: WireDtypeOpt = "float32",
    fast_kernels: Annotated[bool, typer.Option("--fast-kernels", help="Use oneDNN convolutions (faster, "
                                                                    "not bit-exact across tile sizes).")] = False,
) -> None:
    """Run a plan in one process with sliced modules and compare every model with its whole model.

    Exits 0 iff every output is allclose(atol, rtol).
    """
    import torch

    from edgepart.executor import Executor, compare, use_exact_kernels
    from edgepart.graph.loader import ModelRef, load_model, trace_ref
    from edgepart.plan import check_plan, load_plan

    use_exact_kernels(not fast_kernels)
    if plan_file is None and model is None:
        raise fail("name a MODEL to plan and verify, or give --plan plan.json")
    if plan_file is not None:
        plan = load_plan(plan_file)
        if model is not None:  # the user's reference (weights, seed) for a one-model plan
            if len(plan.models) != 1:
                raise fail(f"the plan has {len(plan.models)} models; leave out MODEL to verify them all")
            refs = {plan.models[0].id: model_ref(model, input_shape, weights, seed)}
        else:
            refs = {m.id: ModelRef(m.name, m.input_shape, m.weights, seed if m.weights is None else m.seed)
                    for m in plan.models}
    else:
        assert model is not None
        ref = model_ref(model, input_shape, weights, seed)
    traced: dict[str, Any] = {}
    if plan_file is None:
        module = load_model(ref)
        gm, graph = trace_ref(ref, module)
        plan = build_plan(graph, ref, devices, solver, grid, fused_layers, split,
                          cluster=load_cluster_option(cluster, devices), objective=objective, options=option,
                          compression=compression, wire_dtype=wire_dtype)
        traced[plan.models[0].id] = (gm, graph)
    else:
        for mid, mref in refs.items():
            traced[mid] = trace_ref(mref, load_model(mref))
    check_plan(plan, {mid: graph for mid, (_, graph) in traced.items()})
    typer.echo(f"{plan.solver} plan: {len(plan.models)} model{'s' if len(plan.models) > 1 else ''}, "
               f"{len(plan.compute_tasks)} tasks on {len(plan.devices)} devices")
    failed = []
    for mid, (gm, graph) in traced.items():
        executor = Executor(gm, graph)
        x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(seed))
        expected = executor.run_whole(x)
        actual = executor.run_plan(plan, x, mid)
        result = compare(expected, actual, atol, rtol)
        typer.echo(f"{mid} ({graph.model_name}): output {'x'.join(map(str, result.output_shape))}, max abs diff "
                   f"{result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g} (atol {atol:g}, rtol {rtol:g})")
        if not result.allclose:
            failed.append(mid)
    lossy = sum(1 for t in plan.tasks for i in t.inputs if i.wire_dtype == "float16")
    if lossy:
        typer.echo(f"float16 on the wire for {lossy} transfers: lossy, the diff above is its error")
    if failed:
        raise fail(f"the split output of {', '.join(failed)} differs from the whole model's", code=1)
    typer.echo("OK: the split output equals the whole model's" if len(traced) == 1 else
               "OK: every model's split output equals its whole model's")


# ------------------------------------------------------------------ planner: solvers / profile / simulate


@app.command("solvers")
def solvers_command() -> None:
    """List the registered solvers and their options (pass options with -O KEY=VALUE)."""
    from edgepart.planner.registry import SOLVERS

    rows = [[name, ", ".join(f"{k}={v[1]!r}" for k, v in info.options.items()) or "-", info.summary]
            for name, info in SOLVERS.items()]
    typer.echo(format_table(["solver", "options (default)", "what it does"], rows))


@app.command("profile")
@user_errors
def profile_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the device profile JSON.")] = Path(
        "device.json"),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer sizes and repetitions, one model (~1 min).")] = False,
    models: Annotated[str | None, typer.Option("--models", help="Comma-separated zoo models whose layers to time "
                                                                "(default: vgg16,yolov2,resnet50,mobilenet_v2,"
                                                                "googlenet,squeezenet1_1,alexnet; with --quick: "
                                                                "vgg16).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads while timing "
                                                                         "(default: torch's setting).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Device name in the profile (default: host).")] = None,
    exact_kernels: Annotated[bool, typer.Option("--exact-kernels", help="Time the native kernels (what the "
                                                                        "partitions of an exactKernels: true "
                                                                        "deployment run; default: oneDNN's, "
                                                                        "as partitions run by default).")
                             ] = False,
    net_probe: Annotated[str | None, typer.Option("--net-probe", help="Instead: measure the link to URL (a peer "
                                                                      "running --net-serve); print alpha and "
                                                                      "bandwidth.")] = None,
    net_serve: Annotated[str | None, typer.Option("--net-serve", help="Instead: serve the probe endpoint on "
                                                                      "HOST:PORT until interrupted.")] = None,
) -> None:
    """Micro-benchmark this machine and fit one cost regression per op type (writes a device profile JSON)."""
    import json
    import platform

    if net_serve is not None:
        from edgepart.profiler.netprobe import serve_echo

        host, _, port = net_serve.rpartition(":")
        if not port.isdigit():
            raise fail(f"--net-serve {net_serve!r}: expected HOST:PORT, e.g. 0.0.0.0:8099")
        typer.echo(f"serving the network probe on http://{host or '0.0.0.0'}:{port}/sink (Ctrl-C stops)")
        serve_echo(host or "0.0.0.0", int(port))
        return
    if net_probe is not None:
        import httpx

        from edgepart.profiler.netprobe import probe_sync

        try:
            link = probe_sync(net_probe)
        except (httpx.HTTPError, RuntimeError) as err:
            raise fail(f"--net-probe {net_probe}: {err}") from None
        typer.echo(f"link to {net_probe}: latency {link.alpha_s * 1e3:.3f} ms, "
                   f"bandwidth {link.bandwidth_Bps * 8e-6:.1f} Mbps")
        if output != Path("device.json"):
            output.write_text(json.dumps(link.to_dict(), indent=2) + "\n")
            typer.echo(f"wrote {output}")
        return
    from edgepart.profiler.run import DEFAULT_MODELS, QUICK_MODELS, ProfileConfig, profile_device

    chosen = tuple(m for m in models.split(",") if m) if models else (QUICK_MODELS if quick else DEFAULT_MODELS)
    config = ProfileConfig(name=name or platform.node() or "device", models=chosen, quick=quick, threads=threads,
                           exact_kernels=exact_kernels)
    with typer.progressbar(length=1, label="timing tiles") as bar:
        state = {"total": 0, "done": 0}

        def progress(done: int, total: int, what: str) -> None:
            if total != state["total"]:
                bar.length = total
                state["total"] = total
            bar.update(done - state["done"])
            state["done"] = done

        profile = profile_device(config, progress)
    profile.save(output)
    rows = [[family, m.samples, f"{m.r2:.3f}" if m.r2 is not None else "-",
             f"{m.mape * 100:.1f}%" if m.mape is not None else "-"] for family, m in sorted(profile.ops.items())]
    typer.echo(format_table(["op", "samples", "held-out R2", "held-out MAPE"], rows, right=(1, 2, 3)))
    for check in profile.meta.get("wholeModels", []):
        typer.echo(f"{check['model']}: measured {check['measuredS'] * 1e3:.1f} ms, predicted "
                   f"{check['predictedS'] * 1e3:.1f} ms ({check['error'] * 100:+.1f}%)")
    typer.echo(f"wrote {output}")


@app.command("simulate")
@user_errors
def simulate_command(
    plan_file: Annotated[Path, typer.Argument(help="A plan.json (from `edgepart plan`).")],
    cluster: ClusterOpt = None,
    rate: Annotated[float | None, typer.Option("--rate", min=0.0, help="Poisson arrival rate (requests/s); "
                                                                      "default: all at once (saturation).")] = None,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Number of requests.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the arrival process.")] = 0,
    bandwidth: BandwidthOpt = "100Mbps",
    svg: Annotated[Path | None, typer.Option("--svg", help="Also draw the plan as SVG.")] = None,
) -> None:
    """Predict a plan's latency and throughput, then simulate a stream of requests (queueing included)."""
    from edgepart.plan import check_plan, load_plan
    from edgepart.planner.cluster import Cluster
    from edgepart.sim.simulate import simulate

    plan = load_plan(plan_file)
    graphs = plan_graphs(plan)
    check_plan(plan, graphs)
    if cluster is not None:
        target = load_cluster_option(cluster, len(plan.devices))
    else:  # identical reference devices named as in the plan, its master first
        names = [plan.master, *(d for d in plan.devices if d != plan.master)]
        target = Cluster.homogeneous(len(names), bandwidth=bandwidth, names=names)
    result = simulate(plan, graphs, target, rate if rate else None, requests, seed)
    predicted = result.predicted
    resource, busy = predicted.bottleneck
    typer.echo(f"predicted (idle system): latency {predicted.latency_s * 1e3:.2f} ms; throughput "
               f"{predicted.throughput_per_s:.2f}/s (bottleneck {resource}, {busy * 1e3:.2f} ms per request)")
    arrivals = f"Poisson at {rate:g}/s" if rate else "all at once"
    lat = result.latency
    typer.echo(f"simulated {result.requests} requests ({arrivals}): throughput {result.throughput_per_s:.2f}/s; "
               f"latency mean {lat.mean_s * 1e3:.2f} ms, p50 {lat.p50_s * 1e3:.2f}, p95 {lat.p95_s * 1e3:.2f}, "
               f"p99 {lat.p99_s * 1e3:.2f}, max {lat.max_s * 1e3:.2f}")
    views = plan.stage_view()
    rows = [[s.index, views[s.index].kind if s.index < len(views) else "", f"{s.scatter_s * 1e3:.2f}",
             f"{s.compute_s * 1e3:.2f}", f"{s.queue_s * 1e3:.2f}", f"{s.time_s * 1e3:.2f}"] for s in result.stages]
    typer.echo(format_table(["stage", "kind", "scatter ms", "compute ms", "queued ms", "stage ms"], rows,
                            right=(2, 3, 4, 5)))
    busiest = sorted(result.utilisation.items(), key=lambda kv: -kv[1])[:6]
    typer.echo("utilisation: " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in busiest))
    if svg is not None:
        from edgepart.sim.draw import plan_svg

        svg.write_text(plan_svg(plan, graphs, target))
        typer.echo(f"wrote {svg}")


@app.command("dse")
@user_errors
def dse_command(
    deployment: Annotated[Path, typer.Argument(help="A DNNDeployment YAML with spec.variants and inline devices.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the front and the choice as JSON.")] = False,
) -> None:
    """Accuracy-aware data partitioning: the design-space table's Pareto front (throughput, accuracy, power)
    and the configuration the target selects (exit 1 when the target cannot be met)."""
    from edgepart.runtime.variants_local import dse_report
    from edgepart.spec import load_deployment

    text, feasible = dse_report(load_deployment(deployment), Path.cwd(), as_json=as_json)
    typer.echo(text)
    if not feasible:
        raise typer.Exit(1)


# ------------------------------------------------------------------ local runtime: up / status / down / infer


@app.command("up")
@user_errors
def up_command(
    deployment: Annotated[Path, typer.Argument(help="A DNNDeployment YAML with inline devices.")],
    port: Annotated[int, typer.Option("--port", help="Gateway port on 127.0.0.1 (0: any free port).")] = 8080,
    emulate: Annotated[bool, typer.Option("--emulate", help="Run each device in its own network namespace with "
                                                            "a tc tbf bandwidth cap and a cgroup CPU quota "
                                                            "(root only).")] = False,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Deploy this plan.json instead of "
                                                                  "planning.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait until every partition is "
                                                             "ready.")] = 300.0,
    runtime: Annotated[str, typer.Option("--runtime", help="processes (local processes) or docker (containers "
                                                           "of the image on the engine DOCKER_HOST names).")
                       ] = "processes",
    image: Annotated[str | None, typer.Option("--image", help="--runtime docker: the image (default "
                                                              "$EDGEPART_IMAGE or localhost/edgepart:dev).")] = None,
    supervise: Annotated[bool, typer.Option("--supervise/--no-supervise",
                                            help="Restart processes that exit, with backoff, until `down`.")] = True,
    device_timeout: Annotated[float, typer.Option("--device-timeout", help="Seconds a device's partitions may stay "
                                                                           "down (every restart failing) before the "
                                                                           "deployment is re-planned without it; 0: "
                                                                           "never.")] = 30.0,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate",
                                            help="--emulate: cost the devices with their speed and message cost "
                                                 "measured under their CPU quota on this host (cached per host, "
                                                 "quota and model); --no-calibrate: at cpus x the reference.")
                         ] = True,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="--emulate: measure again, replacing the "
                                                                    "cached calibration.")] = False,
) -> None:
    """Start a deployment as local processes or containers (a gateway and one per partition); print the gateway URL."""
    import asyncio

    from edgepart.runtime import commands
    from edgepart.runtime.device_calibration import CalibrationSettings

    if recalibrate and not emulate:
        raise fail("--recalibrate: only emulated devices (--emulate) are calibrated")
    if recalibrate and not calibrate:
        raise fail("--recalibrate and --no-calibrate contradict each other: give one")

    if runtime not in ("processes", "docker"):
        raise fail(f"--runtime {runtime!r}: expected processes or docker")
    if runtime == "docker":
        if emulate:
            raise fail("--emulate: emulated devices are local processes; with --runtime docker, a device's cpus "
                       "become the containers' CPU limits")
        from edgepart.runtime import container_commands

        asyncio.run(container_commands.up(deployment, port=port, plan_path=plan_file, timeout_s=timeout,
                                          echo=typer.echo, image=image))
        return
    settings = CalibrationSettings(mode="off" if not calibrate else "recalibrate" if recalibrate else "cached")
    asyncio.run(commands.up(deployment, port=port, emulate=emulate, plan_path=plan_file, timeout_s=timeout,
                            echo=typer.echo, supervise=supervise, calibration=settings,
                            device_timeout_s=device_timeout if device_timeout > 0 else None))


@app.command("load")
@user_errors
def load_command(
    urls: Annotated[list[str] | None, typer.Argument(help="Source URLs (default: every source of the "
                                                          "deployment with sources that is up).")] = None,
    rate: Annotated[float | None, typer.Option("--rate", min=0.001, help="Images per second per source, Poisson "
                                                                        "arrivals (default: all at once).")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Images per source.")] = 100,
    deployment: Annotated[str | None, typer.Option("--deployment", help="The local deployment (default: the "
                                                                        "only one with sources).")] = None,
    secret_file: Annotated[str | None, typer.Option("--secret-file", help="The deployment's secret (default: "
                                                                          "its run directory's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the arrivals and the images.")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds an image may take.")] = 300.0,
) -> None:
    """Drive a deployment's sources with Poisson arrivals; report per-source completion, per-image time,
    rejected (503: queue full) and lost (exit 1 if any was lost)."""
    import asyncio

    from edgepart.runtime.load import LoadSettings
    from edgepart.runtime.load import load_command as run_load

    settings = LoadSettings(rate=rate, count=count, seed=seed, timeout_s=timeout)
    code = asyncio.run(run_load(urls or [], settings, deployment=deployment, secret_file=secret_file,
                                echo=typer.echo))
    if code:
        raise typer.Exit(code)


@app.command("status")
@user_errors
def status_command(
    name: Annotated[str | None, typer.Argument(help="Deployment name (default: all that are up).")] = None,
) -> None:
    """Show local deployments: gateway URL and every partition's process and readiness (exit 1 if not ready)."""
    import asyncio

    from edgepart.runtime import commands, container_commands
    from edgepart.runtime.containers import ContainerRuntimeError
    from edgepart.runtime.local import LocalRuntime

    local = LocalRuntime().load(name) is not None if name else True
    ok = asyncio.run(commands.status(name, echo=typer.echo)) if local else True
    try:  # and the containers on the engine DOCKER_HOST names
        ok = asyncio.run(container_commands.status(name, echo=typer.echo)) and ok
    except ContainerRuntimeError as err:
        if not local:
            raise fail(str(err)) from None
    if not ok:
        raise typer.Exit(1)


@app.command("restart")
@user_errors
def restart_command(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    process: Annotated[str, typer.Argument(help="A partition id (see `edgepart status`) or `gateway`.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait until every partition is "
                                                             "ready.")] = 300.0,
) -> None:
    """Restart one process of a local deployment (stopping it first) and wait until the deployment is ready."""
    import asyncio

    from edgepart.runtime import commands

    asyncio.run(commands.restart(name, process, echo=typer.echo, timeout_s=timeout))


@app.command("down")
@user_errors
def down_command(
    name: Annotated[str | None, typer.Argument(help="Deployment name (default: the only one up).")] = None,
) -> None:
    """Stop a deployment: its processes, emulated devices and run directory, or its containers."""
    import asyncio

    from edgepart.runtime import commands, container_commands
    from edgepart.runtime.containers import ContainerRuntime, engine_configured
    from edgepart.runtime.local import LocalRuntime

    local = LocalRuntime()
    in_containers = (engine_configured() and not (name and local.load(name)) and not (name is None and local.runs())
                     and (name is None or name in ContainerRuntime().names()))
    if in_containers:
        asyncio.run(container_commands.down(name, echo=typer.echo))
        return
    asyncio.run(commands.down(name, echo=typer.echo))


@app.command("infer")
@user_errors
def infer_command(
    url: Annotated[str, typer.Argument(help="Gateway URL, e.g. http://127.0.0.1:8080")],
    random: Annotated[bool, typer.Option("--random", help="Send a random input (seeded by --seed).")] = False,
    input_file: Annotated[Path | None, typer.Option("--input", help="Send this .npy array (N,C,H,W).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Also run the whole model named by --model or "
                                                        "--deployment here with the deployment's kernels; exit 0 "
                                                        "iff the outputs agree: bit for bit with exact kernels, "
                                                        "else max|diff| <= 1e-4 * max|reference|.")] = False,
    exact_kernels: Annotated[bool, typer.Option("--exact-kernels", help="--check --model: the deployment runs "
                                                                        "exact kernels (exactKernels: true); "
                                                                        "--deployment FILE says so itself.")
                             ] = False,
    model: Annotated[str | None, typer.Option("--model", help="--check: the model to compare with (zoo name, "
                                                              "package.module:factory or file.py:factory).")] = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    model_seed: Annotated[int, typer.Option("--model-seed", help="--check: seed of the model's deterministic "
                                                                 "weights when no --weights file is given.")] = 0,
    deployment: Annotated[Path | None, typer.Option("--deployment", help="--check: compare with the model of "
                                                                         "this DNNDeployment file.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random input.")] = 0,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Send the input this many times; report "
                                                                    "the median latency.")] = 1,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the output to this .npy.")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Print the last request's timeline at every partition "
                                                        "(first piece, assembled, compute, sent).")] = False,
    model_id: Annotated[str | None, typer.Option("--model-id", help="Which model of a deployment with several "
                                                                    "(its id; see GET /v1/models).")] = None,
    held_out: Annotated[bool, typer.Option("--held-out", help="A variants dispatcher: send the digits family's "
                                                              "held-out images and report the measured accuracy "
                                                              "(--check --deployment FILE: every answer against "
                                                              "its variant run here).")] = False,
    images: Annotated[int, typer.Option("--images", min=1, help="--held-out: images per request.")] = 90,
) -> None:
    """Send one input to a gateway; print the output shape and latency.

    --check compares with a model you name (--model, or --deployment FILE): never with what the gateway
    describes, since building a model runs its code.
    """
    import asyncio

    from edgepart.runtime import commands

    if held_out:
        from edgepart.runtime.variants_local import infer_held_out

        if check and deployment is None:
            raise fail("--held-out --check needs --deployment FILE (the family to compare with)")
        code = asyncio.run(infer_held_out(url, images=images, check_with=deployment if check else None,
                                          echo=typer.echo))
        if code:
            raise typer.Exit(code)
        return
    reference = commands.reference_model(model, input_shape, weights, model_seed, deployment, model_id)
    exact = commands.deployed_kernels(deployment, exact_kernels)
    code = asyncio.run(commands.infer_command(url, random=random, input_path=input_file, check_output=check,
                                              seed=seed, requests=requests, output_path=output, echo=typer.echo,
                                              show_trace=trace, reference=reference, model_id=model_id,
                                              exact_kernels=exact))
    if code:
        raise typer.Exit(code)


@app.command("serve-partition")
def serve_partition_command() -> None:
    """Role entry of a partition process or pod (config in EDGEPART_CONFIG: a JSON path or the JSON)."""
    from edgepart.partition_service.server import main as serve_main

    raise typer.Exit(serve_main("partition"))


@app.command("serve-ring-worker")
def serve_ring_worker_command() -> None:
    """Role entry of a ring-worker process or pod (config in EDGEPART_CONFIG: a JSON path or the JSON)."""
    from edgepart.partition_service.ring import serve_main

    raise typer.Exit(serve_main())


@app.command("serve-gateway")
def serve_gateway_command() -> None:
    """Role entry of the gateway process or pod (config in EDGEPART_CONFIG: a JSON path or the JSON)."""
    from edgepart.partition_service.server import main as serve_main

    raise typer.Exit(serve_main("gateway"))


@app.command("serve-dispatcher")
def serve_dispatcher_command() -> None:
    """Role entry of a variants deployment's dispatcher (config in EDGEPART_CONFIG: a JSON path or the JSON)."""
    from edgepart.partition_service.server import main as serve_main

    raise typer.Exit(serve_main("dispatcher"))


@app.command("serve-worker")
def serve_worker_command() -> None:
    """Role entry of a variant worker (config in EDGEPART_CONFIG: a JSON path or the JSON)."""
    from edgepart.partition_service.server import main as serve_main

    raise typer.Exit(serve_main("worker"))


# ------------------------------------------------------------------ demo


@app.command("demo")
@user_errors
def demo_command(
    deployment: Annotated[Path, typer.Option(help="The DNNDeployment to run.")] = Path(
        "examples/deployments/vgg16-4dev.yaml"),
    requests: Annotated[int, typer.Option(min=1, help="Requests to time on each deployment.")] = 5,
) -> None:
    """The main job end to end: verify fused-tile splits of VGG-16 and YOLOv2, then deploy VGG-16 on
    4 (emulated, when root) devices, answer requests, check them against the whole model and compare
    measured with predicted latency and with one device."""
    from edgepart.runtime.demo import run_demo

    for model, grid in (("vgg16", "3x3"), ("yolov2", "3x3")):
        typer.echo(f"\n$ edgepart plan {model} --devices 4 --solver ftp-grid --grid {grid} -o out/{model}.json")
        Path("out").mkdir(exist_ok=True)
        plan_command(model, Path(f"out/{model}.json"), solver="ftp-grid", grid=grid)
        typer.echo(f"\n$ edgepart verify {model} --plan out/{model}.json")
        verify_command(model, Path(f"out/{model}.json"))
    typer.echo(f"\n$ edgepart up {deployment} ... infer --check ... down")
    report = run_demo(deployment, requests=requests, echo=typer.echo)
    if not report.ok:
        raise fail("the deployed split did not reproduce the whole model's output", code=1)


# ------------------------------------------------------------------ kubernetes: render / crd / operator


def data_plane_configs(request: Any) -> Any:
    """The operator's ConfigRenderer: the data plane's own partition and gateway configs.

    Wired here, at the composition root, because the operator package never imports the data plane.
    """
    from edgepart.operator.configs import RenderedConfigs, RingRequest, VariantConfigRequest
    from edgepart.partition_service.config import render_configs

    if isinstance(request, VariantConfigRequest):  # accuracy-aware data partitioning
        from edgepart.partition_service.variant_server import variant_configs

        dispatcher, workers = variant_configs(request)
        return RenderedConfigs(gateway=dispatcher, partitions=workers)
    if isinstance(request, RingRequest):  # a deployment with sources: one ring-worker config per node
        from edgepart.partition_service.config import ModelSource
        from edgepart.partition_service.ring_config import render_ring_configs

        assert request.model.input_shape is not None
        ring = render_ring_configs(
            request.graph, request.whole_s, request.deployment, ModelSource.of(request.model, request.model.input_shape),
            request.ring, request.sources, request.addresses, scheduler=request.scheduler,
            secret_file=request.secret_file, queue_bound=request.queue_bound, heartbeat_s=request.heartbeat_s,
            bind_host="0.0.0.0", ports=dict.fromkeys(request.ring, request.port), threads=dict(request.threads),
            request_timeout_s=request.request_timeout_s, exact_kernels=request.exact_kernels)
        return RenderedConfigs(gateway="", partitions={c.worker: c.model_dump_json(indent=2) for c in ring})

    configs = render_configs(request.plan, request.deployment, request.addresses, request.gateway_url,
                             client_port=request.client_port, secret_file=request.secret_file,
                             gateway_device=request.gateway_device, request_timeout_s=request.request_timeout_s,
                             admission=request.admission, peer_timeout_s=request.peer_timeout_s,
                             threads=dict(request.threads),
                             exact_kernels=request.exact_kernels)
    return RenderedConfigs(gateway=configs.gateway.model_dump_json(indent=2),
                           partitions={c.partition: c.model_dump_json(indent=2) for c in configs.partitions})


@app.command("render")
@user_errors
def render_command(
    deployment: Annotated[Path, typer.Argument(help="A DNNDeployment YAML file.")],
    nodes: Annotated[Path, typer.Option("--nodes", help="Nodes: `kubectl get nodes -o yaml` output, or a list "
                                                        "of {name, cpu, memory, arch, labels, deviceClass}.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the rendered objects.")],
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", help="DEVICE_CLASS=profile.json (repeatable); classes without one need a profiling Job.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Image of the partition and gateway pods.")] = None,
    graph: Annotated[Path | None, typer.Option(
        "--graph", help="The model's layer graph from `edgepart trace` (models outside the zoo are never "
                        "imported here; without it, the tracing Job is rendered).")] = None,
    owner_uid: Annotated[str, typer.Option("--owner-uid", help="uid of the DNNDeployment, to set owner "
                                                               "references (omitted when empty).")] = "",
) -> None:
    """Write the objects the operator would create for DEPLOYMENT, without a cluster."""
    from edgepart.operator.commands import (
        load_graph_file,
        load_nodes,
        load_profiles,
        load_resource,
        render_directory,
    )
    from edgepart.operator.settings import OperatorSettings

    settings = OperatorSettings(image=image) if image else OperatorSettings()
    resource = load_resource(deployment)
    graphs = load_graph_file(graph, resource, settings) if graph is not None else {}
    result = render_directory(resource, load_nodes(nodes), load_profiles(profile or []), output,
                              settings=settings, configs=data_plane_configs, owner_uid=owner_uid, graphs=graphs)
    status = result.desired.status
    typer.echo(f"phase {status['phase']}: {status.get('message', '')}")
    typer.echo(f"wrote {len(result.files)} files to {output}")
    if result.desired.phase == "Failed":
        raise typer.Exit(1)


@app.command("crd")
@user_errors
def crd_command(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the DNNDeployment CRD, generated from the spec's pydantic model."""
    from edgepart.operator.commands import write_crd

    text = write_crd(output)
    if output is None:
        typer.echo(text, nl=False)


@app.command("operator")
@user_errors
def operator_command(
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", "-n", help="Namespace to watch (repeatable; default: $POD_NAMESPACE).")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace "
                                                                               "(needs cluster-wide RBAC).")] = False,
    liveness: Annotated[str, typer.Option("--liveness", help="Liveness endpoint URL ('' for none).")]
    = "http://0.0.0.0:8080/healthz",
) -> None:
    """Run the Kubernetes operator (kopf) for DNNDeployment resources."""
    import logging

    from edgepart.operator.commands import run_operator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_operator(data_plane_configs, namespaces=namespace or [], all_namespaces=all_namespaces,
                 liveness=liveness or None)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
