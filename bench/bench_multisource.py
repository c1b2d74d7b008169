"""Several data sources on a ring (seed 001): MS-MDI against Local and AR-MDI, on the simulator.

The paper's setups (Jetson TX2s over Wi-Fi, MobileNetV2 at 256 x 256): two sources with Poisson
arrivals at α1 = 5 and α2 = 10 images/s, 10K and 30K images; (a) 2 workers, both sources; (b) 3
workers, the third not a source; (c) 2-5 workers, per-image time (total time over the 40K images).
It reports MS-MDI 11% / 16% better than Local / AR-MDI in (a), 32% / 20% in (b), 74% / 29% at 5
workers in (c), with Local better than AR-MDI in (a) and AR-MDI better than Local in (b).

What we run, and why:

- Devices: our emulated testbed's, 0.2 CPU each (the reference profile at speed 0.2, 100 Mbit/s
  switched links, 2 ms), where MobileNetV2 at 256 x 256 takes 243 ms: one device computes 4.1
  images/s. We keep the paper's rates and counts, so source 1 offers 1.2x and source 2 2.4x what
  one device computes. The paper's devices were overloaded too: its times grow linearly with the
  number of images, and a ring that kept up would finish when the last image arrives, whatever
  the policy.
- Message cost, two regimes. *testbed*: 6 ms of a device's time per message end (what a message
  costs an emulated 0.2-CPU device, `edgepart.runtime.calibrate.message_cpu`; README), 2.5% of
  the model. *paper*: 15% of the model per message end. AR-MDI spreads every image over n
  workers with n hops (2n message ends), so with its allocation balanced and a message costing a
  fraction r of the model, AR-MDI / Local = (4/3)(1 + 2nr) / n (Local is source 2's 30K images on
  one device). The paper's (a) and (b) give AR-MDI / Local = 1.06 and 0.85, i.e. r = 0.147 and
  0.152: its messages (Python serialisation over Wi-Fi against a GPU's compute) cost about 15%
  of the model at each end. Its (c) gives r = 0.04, inconsistent with the other two under any
  such model; we print it as reported.
- Policies: Local, AR-MDI (γ refreshed from measured compute), MS-MDI with the paper's weights,
  and MS-MDI with rate weights ([R]: each weight over the seconds its task takes here).

`--quick` runs 1/20 of the images (500 and 1500) and 2, 3 and 5 workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.policy.scheduling import DecisionSettings
from edgepart.sim.draw import line_chart_svg
from edgepart.sim.multisource import (
    MultiSourceResult,
    MultiSourceSettings,
    SourceLoad,
    simulate_multisource,
)

RESULTS = Path(__file__).parent / "results"
MODEL = ModelRef("mobilenet_v2", (1, 3, 256, 256))
SPEED = 0.2  # the testbed's devices: 0.2 CPU of the reference core
RATES = (5.0, 10.0)
COUNTS = (10_000, 30_000)
REGIMES = {"testbed": None, "paper": 0.15}  # message time per end: the calibrated 6 ms, or this share of the model
TESTBED_MESSAGE_S = 6e-3
PAPER = {2: (0.11, 0.16), 3: (0.32, 0.20), 5: (0.74, 0.29)}  # MS-MDI better than (Local, AR-MDI)
POLICIES = {"Local": ("local", "queue"), "AR-MDI": ("ar-mdi", "queue"), "MS-MDI": ("ms-mdi", "queue"),
            "MS-MDI rate": ("ms-mdi", "rate")}


@dataclass(frozen=True)
class Row:
    regime: str
    workers: int
    results: dict[str, MultiSourceResult]

    def per_image_s(self, name: str) -> float:
        return self.results[name].per_image_s

    def gain(self, name: str, over: str) -> float:
        return 1 - self.per_image_s(name) / self.per_image_s(over)


def whole_model_s(graph: LayerGraph) -> float:
    device = Device("d", reference_profile(), SPEED)
    return sum(device.layer_time(layer) for layer in graph.layers)


def cluster(workers: int, message_s: float) -> Cluster:
    devices = tuple(Device(f"w{i}", reference_profile(), SPEED, message_overhead_s=message_s * SPEED)
                    for i in range(workers))
    return Cluster(devices, "w0", "switched", Link(2e-3, 100e6 / 8))


def run(graph: LayerGraph, regime: str, workers: int, scale: float) -> Row:
    share = REGIMES[regime]
    message_s = TESTBED_MESSAGE_S if share is None else share * whole_model_s(graph)
    target = cluster(workers, message_s)
    ring = list(target.names)
    sources = [SourceLoad(ring[i], round(COUNTS[i] * scale), RATES[i]) for i in range(2)]
    results = {}
    for name, (scheduler, weights) in POLICIES.items():
        settings = MultiSourceSettings(scheduler, DecisionSettings(weights=weights),  # type: ignore[arg-type]
                                       trace_period_s=None)
        results[name] = simulate_multisource(graph, target, ring, sources, settings)
    return Row(regime, workers, results)


def ordering(row: Row, ms_mdi: str) -> tuple[str, bool]:
    """The measured order and whether it is the paper's (Local before AR-MDI at 2 workers, after it above)."""
    names = ("Local", "AR-MDI", ms_mdi)
    ordered = sorted(names, key=row.per_image_s)
    expected = [ms_mdi, "Local", "AR-MDI"] if row.workers == 2 else [ms_mdi, "AR-MDI", "Local"]
    return " < ".join(n.replace(" rate", "") for n in ordered), ordered == expected


def implied_message_share(workers: int) -> float:
    """The message cost r (share of the model per message end) under which balanced AR-MDI / Local is the
    paper's ratio: AR-MDI / Local = (4/3)(1 + 2nr) / n, with (1 - gain vs Local) / (1 - gain vs AR-MDI)."""
    vs_local, vs_ar = PAPER[workers]
    ratio = (1 - vs_local) / (1 - vs_ar)
    return (ratio * workers * 3 / 4 - 1) / (2 * workers)


def pct(value: float) -> str:
    return f"{value * 100:+.0f}%"


def main(quick: bool) -> None:
    graph = load_graph(MODEL)
    scale = 0.05 if quick else 1.0
    workers = (2, 3, 5) if quick else (2, 3, 4, 5)
    model_s = whole_model_s(graph)
    lines = ["# Several data sources: MS-MDI vs Local and AR-MDI (simulator)", "",
             f"MobileNetV2 256x256 on {SPEED}-CPU devices ({model_s * 1000:.0f} ms per image, "
             f"{1 / model_s:.1f} images/s per device), 100 Mbit/s switched, Poisson {RATES[0]:g} and {RATES[1]:g} "
             f"images/s, {round(COUNTS[0] * scale)} and {round(COUNTS[1] * scale)} images; per-image time = "
             "total time / images. Gains: 1 - time(MS-MDI) / time(baseline); the paper's in brackets.", ""]
    rows: list[Row] = []
    for regime in REGIMES:
        share = REGIMES[regime]
        cost = f"{TESTBED_MESSAGE_S * 1000:.0f} ms" if share is None else f"{share:.0%} of the model"
        header = [f"## Regime `{regime}`: a message costs {cost} at each end", "",
                  "| workers | Local | AR-MDI | MS-MDI | MS-MDI rate | MS-MDI vs Local | vs AR-MDI | "
                  "rate vs Local | rate vs AR-MDI | order (MS-MDI) | order (rate) | local share at sources |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += header
        print("\n".join(header), flush=True)
        for n in workers:
            row = run(graph, regime, n, scale)
            rows.append(row)
            paper = PAPER.get(n)
            vs_local = pct(row.gain("MS-MDI", "Local")) + (f" ({paper[0]:.0%})" if paper else "")
            vs_ar = pct(row.gain("MS-MDI", "AR-MDI")) + (f" ({paper[1]:.0%})" if paper else "")
            order_q, ok_q = ordering(row, "MS-MDI")
            order_r, ok_r = ordering(row, "MS-MDI rate")
            local_share = "/".join(f"{s.done_locally / s.done:.2f}" for s in row.results["MS-MDI"].sources)
            local_share += " vs " + "/".join(f"{s.done_locally / s.done:.2f}" for s in row.results["MS-MDI rate"].sources)
            times = " | ".join(f"{row.per_image_s(name) * 1000:.0f} ms" for name in POLICIES)
            line = (f"| {n} | {times} | {vs_local} | {vs_ar} | {pct(row.gain('MS-MDI rate', 'Local'))} | "
                    f"{pct(row.gain('MS-MDI rate', 'AR-MDI'))} | {order_q} {'✓' if ok_q else '✗'} | "
                    f"{order_r} {'✓' if ok_r else '✗'} | {local_share} |")
            lines.append(line)
            print(line, flush=True)
        lines.append("")
        print()
    staleness = [f"- {row.regime}, {row.workers} workers: reports behind MS-MDI decisions were "
                 f"{row.results['MS-MDI'].staleness.mean_age_s * 1000:.0f} ms old on average (p95 "
                 f"{row.results['MS-MDI'].staleness.p95_age_s * 1000:.0f} ms), off by "
                 f"{row.results['MS-MDI'].staleness.mean_error:.2f} images" for row in rows]
    implied = ", ".join(f"{n} workers r = {implied_message_share(n):.3f}" for n in PAPER)
    testbed_r = TESTBED_MESSAGE_S / model_s
    notes = ["Orders: ✓ where the paper's holds (2 workers: MS-MDI < Local < AR-MDI; more: MS-MDI < AR-MDI < "
             "Local). Local share: images each source ran whole under MS-MDI (paper's weights vs rate weights).", "",
             "Why the numbers differ from the paper's:",
             f"- The message cost decides the orderings. Balanced AR-MDI spreads each image over n workers with 2n "
             f"message ends, so AR-MDI / Local = (4/3)(1 + 2nr)/n for a message costing r of the model. The paper's "
             f"own ratios imply {implied}; our testbed's messages cost r = {testbed_r:.3f}, where AR-MDI beats "
             "Local at every size and MS-MDI, a mix of the two, cannot beat AR-MDI.",
             "- MS-MDI with the paper's weights keeps about two thirds of the busier source's images local "
             "(local share above): a whole-model LOCAL image weighs as much as one share of a few layers, and "
             "arrivals keep the two queues equally long. It gains less than the paper reports. Rate weights "
             "send more of the images around the ring.",
             "- The paper's 5-worker gains (74% / 29%) are not consistent with its 2- and 3-worker gains under "
             "any one message cost, so they cannot all be matched with one model of its testbed.", "",
             "Staleness (heartbeat 0.5 s, queue lengths piggy-backed on every frame's response):", *staleness, ""]
    lines += notes
    print("\n".join(notes))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multisource.md").write_text("\n".join(lines) + "\n")
    for regime in REGIMES:
        series = {name: [(float(row.workers), row.per_image_s(name) * 1000) for row in rows if row.regime == regime]
                  for name in POLICIES}
        (RESULTS / f"multisource_{regime}.svg").write_text(line_chart_svg(
            f"Per-image time, regime {regime}", "workers", "ms per image", series))
