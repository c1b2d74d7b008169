"""Accuracy-aware data partitioning (Taufique et al., ASP-DAC'24): our policy vs four baselines, and DSE time.

Setup [R]: the paper's testbed was 2x Odroid XU4, a Raspberry Pi 4 and a Jetson
Nano. We stand in four nodes costed by this project's reference profile at
stated speeds (relative to one reference core): jetson 1.0 (the global node:
it dispatches and also computes), rpi4 0.5, odroid-a 0.35, odroid-b 0.35, on
1 Gbps switched Ethernet with 0.5 ms per message plus each end's measured
message software time; power figures of 10, 6, 7, 7 W (typical loaded
boards; they only break ties and fill the power column). The model family is
the shipped digits family (5 CNNs, accuracy measured by this project on
held-out digits); θ[n][m] comes from the cost model at batch 32. A stream of
40 requests of 4,096 images each (saturated: all queued at once) runs through
the resource manager in the dispatch simulator, once per strategy and
throughput target. Throughput is simulated (links, queues and per-request
overheads included); accuracy is both the expected accuracy of the answers
(image counts x measured accuracy) and the fraction of answers that are right
when request images are mapped onto the held-out digits.

Then the FSM at work: the same stream with a node leaving mid-stream, and with
the jetson running at half speed from mid-stream on (re-planning vs none).
Last, DSE time: the exact dynamic program vs brute-force enumeration, side by
side, up to 8 nodes x 5 variants.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edgepart.graph.loader import load_model
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.policy.dse import DseProblem, Node, Variant, brute_force_front, pareto_front
from edgepart.policy.manager import ManagerSettings, initial_state
from edgepart.policy.select import (
    BASELINES,
    AccuracyAwarePolicy,
    Policy,
    ThroughputTarget,
)
from edgepart.policy.throughput import ThroughputEstimates
from edgepart.sim.dispatch import SimNode, Stream, StreamResult, simulate_dispatch
from edgepart.variants import family_graphs, model_ref, shipped_family
from edgepart.variants.train import load_split, predictions

RESULTS = Path(__file__).parent / "results"
SPEEDS = {"jetson": 0.25, "rpi4": 0.15, "odroid-a": 0.1, "odroid-b": 0.1}
POWER_W = {"jetson": 10.0, "rpi4": 6.0, "odroid-a": 7.0, "odroid-b": 7.0}
MASTER = "jetson"
NETWORK = Link(5e-4, 1e9 / 8)
BATCH = 32
IMAGES = 8192
IMAGE_BYTES = 8 * 8 * 4
RESULT_BYTES = 10 * 4
WINDOW = 2  # requests in flight: the next request's transfers overlap this one's compute
TARGETS = (1.25, 1.5, 2.5)  # times the throughput of the most accurate variant everywhere (θ-proportional)
REPORTED = "+42.5% performance, +4.2% accuracy (slides); +41.52%, +5.2% (arXiv abstract)"
NOTES = [
    "Why ours differs from the paper's figures:",
    "- The throughput gain is set by the target: the policy buys throughput with accuracy until the target is "
    "met, so against a split that keeps the most accurate variant it gains about the target's factor; the "
    "paper's targets, baselines and variants are not public, so its average is not a quantity we can re-run.",
    "- The accuracy gain over the fastest variant everywhere is the family's spread where the target allows: "
    "our digits family spans 8.6 points (0.900 to 0.986); the paper's ImageNet variants are not known.",
    "- Throughput is simulated on the project's cost model with stated board speeds, not measured on the "
    "paper's Odroid/RPi/Jetson testbed. The table's Θ = Σθ ignores the dispatcher's NIC and per-message "
    "software time: with light variants the stream is network-bound (the fastest variant everywhere reaches "
    "a fraction of its table Θ), with one request at a time the per-request overheads show too.",
]


@dataclass(frozen=True)
class Setup:
    cluster: Cluster
    variants: tuple[Variant, ...]
    estimates: ThroughputEstimates
    correct: Mapping[str, Sequence[bool]]  # per variant, per held-out image

    def settings(self, policy: Policy, target: float | None) -> ManagerSettings:
        links = {d.name: (self.cluster.link(MASTER, d.name), self.cluster.link(d.name, MASTER))
                 for d in self.cluster.devices if d.name != MASTER}
        local = Link(self.cluster.local_s(MASTER), float("inf"))
        links[MASTER] = (local, local)
        return ManagerSettings(self.variants, policy, None if target is None else ThroughputTarget(target),
                               POWER_W, links, local_node=MASTER, image_bytes=IMAGE_BYTES, result_bytes=RESULT_BYTES,
                               window=WINDOW)

    def nodes(self, **changes: dict[str, object]) -> list[SimNode]:
        return [SimNode(d.name, {v.name: self.estimates.get(d.name, v.name) or 0.0 for v in self.variants},
                        **changes.get(d.name, {}))  # type: ignore[arg-type]
                for d in self.cluster.devices]


def build_setup() -> Setup:
    manifest = shipped_family()
    family = manifest.family
    graphs = family_graphs(family, BATCH)
    devices = tuple(Device(name, reference_profile(), speed) for name, speed in SPEEDS.items())
    cluster = Cluster(devices, MASTER, "switched", NETWORK)
    split = load_split()
    correct = {}
    for v in family.variants:
        guesses = predictions(load_model(model_ref(v)), split.test_x)
        correct[v.name] = [bool(x) for x in (guesses == split.test_y).tolist()]
    variants = tuple(Variant(v.name, v.accuracy.value) for v in family.variants)
    return Setup(cluster, variants, ThroughputEstimates.predicted(cluster, graphs), correct)


def answers_right(setup: Setup, result: StreamResult) -> float:
    """Fraction of answers that are right: image j of request r is held-out digit (r * IMAGES + j) mod 360."""
    held = len(next(iter(setup.correct.values())))
    right = total = 0
    for part in result.parts:
        base = int(part.request[1:]) * IMAGES
        table = setup.correct[part.variant]
        right += sum(table[(base + j) % held] for j in range(part.start, part.stop))
        total += part.stop - part.start
    return right / total


def run(setup: Setup, policy: Policy, target: float | None, requests: int, window: int = WINDOW,
        **changes: dict[str, object]) -> StreamResult:
    settings = replace(setup.settings(policy, target), window=window)
    state = initial_state(tuple(SPEEDS), setup.estimates)
    return simulate_dispatch(settings, state, setup.nodes(**changes), Stream(requests, IMAGES))


def describe(variants: Sequence[str | None]) -> str:
    return ", ".join(f"{n}:{(v or 'off').removeprefix('digits-')}" for n, v in zip(SPEEDS, variants, strict=True))


def most_accurate_capacity(setup: Setup) -> float:
    policy = BASELINES[1]  # θ-proportional with the most accurate variant: Θ = Σθ
    return policy.choose(setup.settings(policy, None).problem(tuple(SPEEDS), setup.estimates), None,
                         IMAGES).throughput


def comparison(setup: Setup, requests: int) -> tuple[list[str], dict[str, list[tuple[float, float]]]]:
    """Per target: every strategy's row. Returns the table and, per baseline, (throughput gain, accuracy
    difference in points) of ours over it at each target."""
    lines = []
    gains: dict[str, list[tuple[float, float]]] = {p.name: [] for p in BASELINES}
    reference = most_accurate_capacity(setup)
    for factor in TARGETS:
        target = reference * factor
        lines += [f"### Target {target:,.0f} images/s ({factor:g}x the most accurate variant everywhere)", "",
                  "| strategy | configuration | Θ table | Θ simulated | meets target | accuracy (expected) | "
                  "answers right | power |", "|---|---|---|---|---|---|---|---|"]
        results = {}
        strategies: list[tuple[str, Policy, int]] = [("accuracy-aware", AccuracyAwarePolicy(), WINDOW),
                                                     ("accuracy-aware, one request at a time",
                                                      AccuracyAwarePolicy(), 1)]
        strategies += [(p.name, p, WINDOW) for p in BASELINES]
        for label, policy, window in strategies:
            result = run(setup, policy, target, requests, window)
            selection = result.selections[0][1].selection
            results[label] = result
            lines.append(f"| {label} | {describe(selection.variants)} | {selection.throughput:,.0f} | "
                         f"{result.throughput:,.0f} | {'yes' if result.throughput >= target else 'no'} | "
                         f"{result.accuracy:.4f} | {answers_right(setup, result):.4f} | {selection.power_w:g} W |")
        ours = results["accuracy-aware"]
        for p in BASELINES:
            base = results[p.name]
            gains[p.name].append((ours.throughput / base.throughput - 1, (ours.accuracy - base.accuracy) * 100))
        lines.append("")
    return lines, gains


def gain_table(gains: Mapping[str, Sequence[tuple[float, float]]]) -> list[str]:
    head = " | ".join(f"{f:g}x target" for f in TARGETS)
    lines = ["## Ours vs each baseline (throughput gain, accuracy difference in points)", "",
             f"| baseline | {head} | mean |", "|---|" + "---|" * (len(TARGETS) + 1)]
    for name, values in gains.items():
        cells = " | ".join(f"{t:+.1%}, {a:+.2f}" for t, a in values)
        mean_t = sum(t for t, _ in values) / len(values)
        mean_a = sum(a for _, a in values) / len(values)
        lines.append(f"| {name} | {cells} | {mean_t:+.1%}, {mean_a:+.2f} |")
    return lines


def adaptation(setup: Setup, requests: int) -> list[str]:
    target = most_accurate_capacity(setup) * TARGETS[1]
    calm = run(setup, AccuracyAwarePolicy(), target, requests)
    half = calm.makespan_s / 2
    lines = ["## The resource manager at run time", "",
             f"Target {target:,.0f} images/s, {requests} requests of {IMAGES} images; events at "
             f"{half * 1000:.0f} ms (half the undisturbed stream).", "",
             "| scenario | re-plans | configuration at the end | Θ simulated | Θ, last quarter | "
             "accuracy (expected) | images answered once | parts lost and re-dispatched |",
             "|---|---|---|---|---|---|---|---|"]
    scenarios: list[tuple[str, ManagerSettings | None, dict[str, dict[str, object]]]] = [
        ("undisturbed", None, {}),
        ("odroid-b leaves", None, {"odroid-b": {"leaves_at": half}}),
        ("jetson at half speed, FSM re-plans", None, {"jetson": {"slowdowns": ((half, 2.0),)}}),
        ("jetson at half speed, no re-plan", replace(setup.settings(AccuracyAwarePolicy(), target), deviation=1e9),
         {"jetson": {"slowdowns": ((half, 2.0),)}}),
    ]
    for name, settings, changes in scenarios:
        chosen = settings or setup.settings(AccuracyAwarePolicy(), target)
        result = simulate_dispatch(chosen, initial_state(tuple(SPEEDS), setup.estimates), setup.nodes(**changes),
                                   Stream(requests, IMAGES))
        # steady state after the event and the re-plan: the last quarter of the replies
        quarter = max(2, len(result.replies) // 4)
        tail = result.replies[-quarter:]
        late = sum(r.images for _, r in tail[1:]) / (tail[-1][0] - tail[0][0])
        images: dict[tuple[str, int], int] = {}
        for part in result.parts:
            for key in ((part.request, j) for j in range(part.start, part.stop)):
                images[key] = images.get(key, 0) + 1
        once = all(c == 1 for c in images.values()) and len(images) == requests * IMAGES
        final = result.selections[-1][1].selection
        nodes = dict(zip((n.name for n in result.final_state.problem.nodes), final.variants, strict=True)) \
            if result.final_state.problem is not None else {}
        config = ", ".join(f"{n}:{(v or 'off').removeprefix('digits-')}" for n, v in nodes.items())
        lines.append(f"| {name} | {len(result.selections) - 1} | {config} | {result.throughput:,.0f} | {late:,.0f} | "
                     f"{result.accuracy:.4f} | {'yes' if once else 'NO'} | {result.lost_parts} |")
    return lines


def dse_timing(setup: Setup, quick: bool) -> list[str]:
    """8 heterogeneous nodes (speeds 0.3-1.5, power 4-12 W), the 5 digits variants."""
    rng = random.Random(0)
    speeds = [round(rng.uniform(0.3, 1.5), 2) for _ in range(8)]
    watts = [round(rng.uniform(4, 12), 1) for _ in range(8)]
    per_variant = {v.name: setup.estimates.get(MASTER, v.name) or 0.0 for v in setup.variants}
    lines = ["## DSE time: exact dynamic program vs brute force", "",
             "| nodes x variants | configurations | DP: partials examined | front size | DP time | brute force time | "
             "same front |", "|---|---|---|---|---|---|---|"]
    for count in (4, 5, 6, 7, 8) if not quick else (4, 6, 8):
        nodes = tuple(Node(f"n{i}", tuple(per_variant[v.name] * speeds[i] for v in setup.variants), watts[i])
                      for i in range(count))
        problem = DseProblem(setup.variants, nodes)
        started = time.perf_counter()
        front = pareto_front(problem)
        dp_s = time.perf_counter() - started
        brute = "not run"
        same = "-"
        if count <= (6 if quick else 7):
            started = time.perf_counter()
            reference = brute_force_front(problem)
            brute = f"{time.perf_counter() - started:.2f} s"
            same = "yes" if reference.configurations == front.configurations else "NO"
        lines.append(f"| {count} x {len(setup.variants)} | {problem.configuration_count:,} | {front.examined:,} | "
                     f"{len(front)} | {dp_s:.3f} s | {brute} | {same} |")
    return lines


def main(quick: bool) -> None:
    torch.set_num_threads(1)
    requests = 12 if quick else 40
    setup = build_setup()
    header = ["# Accuracy-aware data partitioning: policy vs baselines (simulated dispatch)", "",
              "Nodes (speed vs the reference core, power): " + ", ".join(
                  f"{n} {SPEEDS[n]:g} ({POWER_W[n]:g} W)" for n in SPEEDS)
              + f"; 1 Gbps switched, 0.5 ms per message; {requests} requests x {IMAGES} images.", "",
              "| variant | accuracy (measured, held-out) | θ on jetson (cost model, batch 32) |", "|---|---|---|"]
    for v in setup.variants:
        header.append(f"| {v.name} | {v.accuracy:.4f} | {setup.estimates.get(MASTER, v.name):,.0f} images/s |")
    print("\n".join(header), flush=True)
    table, gains = comparison(setup, requests)
    print("\n".join(table), flush=True)
    versus = gain_table(gains)
    proportional = gains[BASELINES[1].name]
    fastest = gains[BASELINES[2].name]
    summary = [*versus, "",
               f"Mean over the targets: {sum(t for t, _ in proportional) / len(proportional):+.1%} throughput over "
               "the θ-proportional split with the most accurate variant (heterogeneity-aware, no approximation), "
               f"{sum(a for _, a in fastest) / len(fastest):+.2f} points of accuracy over the fastest variant "
               "everywhere (approximation without accuracy awareness).",
               f"Reported by Taufique et al.: {REPORTED}.", "", *NOTES, ""]
    print("\n".join(summary), flush=True)
    fsm = adaptation(setup, requests)
    print("\n".join(fsm), flush=True)
    dse = dse_timing(setup, quick)
    print("\n".join(dse), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy.md").write_text("\n".join([*header, "", *table, *summary, *fsm, "", *dse]) + "\n")
