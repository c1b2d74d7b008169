"""What the partial-offloading solvers return, shaped for plan v2's task graph.

Each path becomes up to two tasks, the fusion one more:

    <model>/p<i>-local   end device, layers [0, cut)       output: the cut region; input: the input region
    <model>/p<i>-server  server, layers [cut, τ)           output: the tile;       input: the cut region
    <model>/fuse         server, layers [τ, L)             inputs: every tile (a relay when τ = L)

(a path cut at unit 0 has no local task and its server task reads the input;
one cut at τ has no server task and the fusion reads its local task). NFL is
one path over the whole model with no fusion. `tasks()` lists them with their
layer ranges [start, stop) at cut points, output regions, inputs and the
priority each device runs them in (the order S).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepart.geometry import Region
from edgepart.planner.offload.schedule import Span
from edgepart.planner.offload.settings import ComputeModel

INPUT_SOURCE = "input"

PAPER_NOTE = ("compute_model=paper: local and server compute of different paths overlap without contention "
              "(the GLOBECOM'22 recurrence); a real end device runs them one at a time, so this makespan "
              "is not what the runtime measures. Use it to reproduce the paper's figures.")


@dataclass(frozen=True)
class PathPlan:
    """One path: its tile of the fused output, where it is cut, and when its parts run."""

    path: int  # index in the grid, row-major
    cut: int  # in units: [0, cut) on the end device, [cut, τ) on the server
    cut_layer: int  # the same cut as a layer position (a cut point)
    tile: Region  # its share of the output of unit τ
    cut_region: Region  # what the uplink carries: the region of the tensor crossing the cut
    input_region: Region  # the region of the model input the path reads
    local: Span | None
    uplink: Span
    server: Span | None
    ready: float  # the fusion (or, for NFL, the end device) has its output


@dataclass(frozen=True)
class TaskSketch:
    """One task of a plan v2 task graph: device, layers [start, stop), output region, inputs, priority."""

    id: str
    device: str
    start: int
    stop: int
    output: Region
    inputs: tuple[tuple[str, Region], ...]  # (producer task id or "input", region)
    priority: int


@dataclass(frozen=True)
class OffloadResult:
    """The best FL strategy a solver found: τ, grid, order S, cuts O, and its timeline."""

    solver: str
    compute_model: ComputeModel
    model: str
    end: str
    server: str
    tau: int  # FL path length in units; NFL: the whole model (no fusion)
    tau_layer: int  # the layer position of cut τ
    layers: int  # the model's layer count (the fusion runs [tau_layer, layers))
    output_shape: tuple[int, ...]
    grid: tuple[int, int]
    order: tuple[int, ...]  # the order S, as path indices
    cuts: tuple[int, ...]  # cut of each path (indexed by path), in units
    makespan_s: float
    paths: tuple[PathPlan, ...]  # in the order S
    fuse: Span | None  # None for NFL
    back: Span | None  # the output's transfer to the end device; None when it is computed there
    searched: int = 0  # FL strategies (τ, grid) the solver evaluated
    skipped: int = 0  # strategies its lower bound ruled out

    @property
    def fused(self) -> bool:
        return self.fuse is not None

    @property
    def note(self) -> str:
        """Why a `paper` makespan is not a prediction of the runtime (one path meets no contention: no note)."""
        return PAPER_NOTE if self.compute_model == "paper" and len(self.paths) > 1 else ""

    def describe(self) -> str:
        cuts = sorted(set(self.cuts))
        text = (f"{self.solver}: {self.makespan_s * 1e3:.1f} ms ({self.compute_model} model), end {self.end}, "
                f"server {self.server}, ")
        if self.fused:
            text += f"τ = {self.tau} units, grid {self.grid[0]}x{self.grid[1]}, cuts {cuts}"
        else:
            text += f"one cut at unit {self.cuts[0]}"
        return text + (f". {self.note}" if self.note else "")

    def tasks(self) -> tuple[TaskSketch, ...]:
        """The plan v2 tasks of this result (local parts, server parts, fusion), in priority order."""
        name = self.model
        local: list[TaskSketch] = []
        remote: list[TaskSketch] = []
        finals: list[tuple[str, Region]] = []
        for rank, p in enumerate(self.paths):
            source = (INPUT_SOURCE, p.input_region)
            if p.cut_layer > 0:
                task_id = f"{name}/p{p.path}-local"
                local.append(TaskSketch(task_id, self.end, 0, p.cut_layer, p.cut_region, (source,), rank))
                source = (task_id, p.cut_region)
            if p.cut_layer < self.tau_layer:
                task_id = f"{name}/p{p.path}-server"
                remote.append(TaskSketch(task_id, self.server, p.cut_layer, self.tau_layer, p.tile, (source,), rank))
                source = (task_id, p.tile)
            finals.append(source)
        tasks = [*local, *remote]
        if self.fused:
            full = Region.full(self.output_shape)
            tasks.append(TaskSketch(f"{name}/fuse", self.server, self.tau_layer, self.layers, full, tuple(finals),
                                    len(self.paths)))
        return tuple(tasks)
