"""The two resource models of SOLVERS.md §5: when each path's local part, transfer and server part run.

With the paths in order S = (s_1..s_P), path s_k cut at o_k has a_k = local
compute, b_k = uplink transfer, e_k = server compute (`costs.PathCosts`), and
its tile reaches the fusion d_k after its server part (a local message on the
server; 0 when the path runs wholly on the end device).

``sequential`` (a 3-machine permutation flow shop, what the runtime executes):

    L_k = L_{k-1} + t_end + a_k          the end device runs the local parts one after another
    X_k = max(X_{k-1}, L_k) + b_k        the uplink is a FIFO
    E_k = max(E_{k-1} + t_server, X_k) + e_k   so is the server

where t_end, t_server is a *turn*: the deployed partitions of one device take
turns (`meta.turns`), each told by the one before it, a local message on that
device; the first local part and the first server part wait for no turn.

``paper`` (the GLOBECOM'22 recurrence: compute without contention, only the uplink queues):

    L_k = a_k,  X_k = max(X_{k-1}, L_k) + b_k,  E_k = X_k + e_k

In both, the fusion starts at F = max_k (E_k + d_k) (a path with no server
part: X_k), runs the layers after cut τ on the server, and the output goes
back to the end device: T = F + post + return.

`Runs` evaluate the same recurrences over runs of identical paths in closed
form, for the searches: over a run of m paths, L, X and E are maxima of
functions linear in the path's position, so their last values are maxima of
the end points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgepart.planner.offload.costs import PathCosts
from edgepart.planner.offload.settings import ComputeModel

Span = tuple[float, float]


@dataclass(frozen=True)
class PathTimes:
    """When one path's parts run (seconds from the request)."""

    path: int
    cut: int
    local: Span | None  # None: cut 0, nothing runs on the end device
    uplink: Span
    server: Span | None  # None: cut τ, the tile goes straight to the fusion
    ready: float  # the fusion has this path's tile


@dataclass(frozen=True)
class Timeline:
    paths: tuple[PathTimes, ...]  # in the order S
    fuse: Span  # the layers after cut τ on the server
    back: Span  # the output sent to the end device
    makespan_s: float

    def busy(self, model: ComputeModel) -> dict[str, float]:
        """Busy seconds of every resource that serves one thing at a time under `model`."""
        uplink = sum(p.uplink[1] - p.uplink[0] for p in self.paths)
        busy = {"uplink": uplink, "downlink": self.back[1] - self.back[0]}
        fuse = self.fuse[1] - self.fuse[0]
        if model == "sequential":
            busy["end"] = sum(p.local[1] - p.local[0] for p in self.paths if p.local is not None)
            busy["server"] = fuse + sum(p.server[1] - p.server[0] for p in self.paths if p.server is not None)
        else:
            busy["server"] = fuse  # path parts run without contention; the fusion is one task
        return busy


def timeline(costs: PathCosts, order: Sequence[int], cuts: Sequence[int], model: ComputeModel) -> Timeline:
    """The schedule of paths `order` (path indices) with cut `cuts[p]` for path p, step by step."""
    if sorted(order) != list(range(costs.paths)):
        raise ValueError(f"order must list each of the {costs.paths} paths once, got {list(order)}")
    if len(cuts) != costs.paths or any(not 0 <= o <= costs.tau for o in cuts):
        raise ValueError(f"cuts must give each of the {costs.paths} paths a cut in 0..{costs.tau}, got {list(cuts)}")
    sequential = model == "sequential"
    end = link = server = fused = 0.0
    end_turn = server_turn = 0.0  # the turn the next local (server) part waits for: none before the first
    result = []
    for p in order:
        k, o = int(costs.path_class[p]), cuts[p]
        a, b, e = float(costs.local[k, o]), float(costs.uplink[k, o]), float(costs.server[k, o])
        start = (end + (end_turn if o > 0 else 0.0)) if sequential else 0.0
        end = start + a
        if o > 0:
            end_turn = costs.end_turn_s
        sent = max(link, end)
        link = sent + b
        if o < costs.tau:
            begin = max(server + server_turn, link) if sequential else link
            finish = begin + e
            if sequential:
                server = finish
                server_turn = costs.server_turn_s
            ready = finish + costs.fuse_delay(o)
            server_span: Span | None = (begin, finish)
        else:
            ready = link
            server_span = None
        fused = max(fused, ready)
        result.append(PathTimes(p, o, (start, end) if o > 0 else None, (sent, link), server_span, ready))
    fuse_end = fused + costs.post_s
    back_end = fuse_end + costs.return_s
    return Timeline(tuple(result), (fused, fuse_end), (fuse_end, back_end), back_end)


@dataclass(frozen=True)
class Run:
    """`count` paths of one class, all cut at `cut`, one after another."""

    klass: int
    cut: int
    count: int


class RunState:
    """The recurrences' state (L, X, E, F) advanced over runs in closed form."""

    __slots__ = ("costs", "end", "end_turn", "fused", "link", "sequential", "server", "server_turn")

    def __init__(self, costs: PathCosts, model: ComputeModel):
        self.costs = costs
        self.sequential = model == "sequential"
        self.end = self.link = self.server = self.fused = 0.0
        self.end_turn = self.server_turn = 0.0  # the turn the next local (server) part waits for

    def advance(self, klass: int, cut: int, count: int) -> None:
        costs = self.costs
        a = float(costs.local[klass, cut])
        b = float(costs.uplink[klass, cut])
        e = float(costs.server[klass, cut])
        m = count
        if self.sequential:
            t = costs.end_turn_s if cut > 0 else 0.0  # a path cut at 0 has no local part: no turn
            start = self.end + (self.end_turn if cut > 0 else 0.0)
            self.end = start + m * a + (m - 1) * t
            if cut > 0:
                self.end_turn = t
            # L_j = start + a + (j-1)(a+t), X_j = max(X_{j-1}, L_j) + b: the largest of X_0 + m b,
            # L_1 + m b, L_m + b
            first_link = max(self.link, start + a) + b
            last_link = max(self.link + m * b, start + a + m * b, self.end + b)
            self.link = last_link
            if cut < costs.tau:
                # E_j = max(E_{j-1} + s, X_j) + e (s: the server's turn): the largest of E_0 + s_0 + m e + (m-1) s,
                # X_1 + m e + (m-1) s, X_m + e
                s = costs.server_turn_s
                self.server = max(self.server + self.server_turn + m * e + (m - 1) * s,
                                  first_link + m * e + (m - 1) * s, last_link + e)
                self.server_turn = s
                self.fused = max(self.fused, self.server + costs.fuse_delay(cut))
            else:
                self.fused = max(self.fused, last_link)
        else:
            self.link = max(self.link, a) + m * b
            ready = self.link + e + costs.fuse_delay(cut) if cut < costs.tau else self.link
            self.fused = max(self.fused, ready)

    @property
    def makespan(self) -> float:
        return self.fused + self.costs.post_s + self.costs.return_s


def runs_makespan(costs: PathCosts, runs: Sequence[Run], model: ComputeModel) -> float:
    state = RunState(costs, model)
    for run in runs:
        state.advance(run.klass, run.cut, run.count)
    return state.makespan


def expand_runs(costs: PathCosts, runs: Sequence[Run]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(order, cuts per path) of a sequence of runs: each class's paths are taken in index order."""
    taken = [0] * costs.classes
    order: list[int] = []
    cuts = [0] * costs.paths
    members = costs.members
    for run in runs:
        for _ in range(run.count):
            p = members[run.klass][taken[run.klass]]
            taken[run.klass] += 1
            order.append(p)
            cuts[p] = run.cut
    return tuple(order), tuple(cuts)
