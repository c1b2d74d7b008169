"""Goodput under overload: admission and deadlines against the old queue-everything behaviour, side by side.

SqueezeNet 1.1 split in 3 pipeline partitions (pipeline-dp, one CPU thread each), plain local processes
(no emulation, no root). First the capacity is measured closed-loop (a few clients back to back), then
each deployment (admission `auto`, admission `off`) gets open-loop Poisson arrivals at 2x that capacity
for 120 s. Goodput counts the answers (200) per second of the run; all of them come before the timeout,
else the gateway would have answered 504. Rejections (503) are timed at the client: with admission they
are answered before the body is read. RSS of each process at the start and the end of its run: memory
must stay flat. Deadlines are on in both columns (`off` turns admission off, not the dropping of expired
work), so `off` is the old admission with today's partitions.

`--quick`: 30 s per run, a 10 s timeout (the old behaviour collapses once the queue is a timeout deep).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._servers import run_on_service_loop
from edgepart.geometry import Region
from edgepart.partition_service.config import GATEWAY
from edgepart.partition_service.wire import CONTENT_TYPE, encode_frame, make_header
from edgepart.runtime.local import LocalRuntime, ProcessState, RunState
from edgepart.spec import deployment_from_dict

RESULTS = Path(__file__).parent / "results"
MODEL = "squeezenet1_1"
# 448 x 448 (4x the compute of 224): the pipeline answers about as fast as the deployment (a few to
# ten a second on a 2-core host), so that the fixed queue limit (272) is deeper than the timeout and the
# load generator, in the same host, stays light next to the partitions
SHAPE = (1, 3, 448, 448)
OVERLOAD = 2.0  # offered load / capacity


def deployment(name: str, admission: str, timeout_s: float) -> dict[str, Any]:
    return {
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": MODEL, "inputShape": list(SHAPE)}, "objective": "throughput", "solver": "pipeline-dp",
            "devices": [{"name": f"d{i}", "cpus": 1} for i in range(3)],
            "network": {"bandwidth": "1Gbps", "latency": "0ms"},
            "requestTimeout": f"{timeout_s:g}s", "admission": admission,
        },
    }


@dataclass
class Outcome:
    status: int
    latency_s: float
    why: str = ""  # the error's reason (503: admission_limit or overloaded), or the client's exception


@dataclass
class Run:
    admission: str
    duration_s: float
    offered_per_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss_start: dict[str, float] = field(default_factory=dict)
    rss_end: dict[str, float] = field(default_factory=dict)
    dropped: float = 0.0
    partitions: int = 0

    def count(self, status: int) -> int:
        return sum(o.status == status for o in self.outcomes)

    def reasons(self, status: int | None) -> dict[str, int]:
        """How many outcomes with `status` (None: neither 200, 503 nor 504) had each reason."""
        chosen = [o for o in self.outcomes
                  if (o.status == status if status is not None else o.status not in (200, 503, 504))]
        return {why: sum(o.why == why for o in chosen) for why in sorted({o.why for o in chosen})}

    def latencies(self, status: int) -> list[float]:
        return sorted(o.latency_s for o in self.outcomes if o.status == status)

    @property
    def goodput(self) -> float:
        return self.count(200) / self.duration_s


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def rss_mib(proc: ProcessState) -> float:
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_of(state: RunState) -> dict[str, float]:
    return {p.id: rss_mib(p) for p in state.processes}


def frame_body() -> bytes:
    x = torch.randn(SHAPE)
    return b"".join(encode_frame(make_header("bench", x, Region.full(x.shape[1:]), -1, GATEWAY), x))


async def post(client: httpx.AsyncClient, url: str, body: bytes, timeout_s: float) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(url + "/v1/infer", content=body, timeout=timeout_s + 10,
                                     headers={"content-type": CONTENT_TYPE, "accept": CONTENT_TYPE})
    except httpx.HTTPError as err:
        return Outcome(0, time.perf_counter() - started, type(err).__name__)
    latency = time.perf_counter() - started
    why = ""
    if response.status_code != 200:
        try:
            why = str(response.json().get("error", ""))
        except ValueError:
            why = response.text[:40]
    return Outcome(response.status_code, latency, why)


async def capacity(client: httpx.AsyncClient, url: str, body: bytes, seconds: float, clients: int = 12) -> float:
    """Requests per second answered with `clients` back-to-back clients (a saturated pipeline: twelve keep
    each of the three stages busy while pieces are on the wire)."""
    stop = time.perf_counter() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            if (await post(client, url, body, 60)).status == 200:
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def open_loop(client: httpx.AsyncClient, url: str, body: bytes, rate: float, seconds: float,
                    timeout_s: float, seed: int) -> list[Outcome]:
    """Poisson arrivals at `rate` for `seconds`; every request's outcome (waits for the last answers)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Outcome]] = []
    start = time.perf_counter()
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            break
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(post(client, url, body, timeout_s)))
    return list(await asyncio.gather(*tasks))


async def dropped_total(client: httpx.AsyncClient, state: RunState) -> float:
    total = 0.0
    for proc in state.processes:
        if proc.role != "partition":
            continue
        text = (await client.get(proc.url + "/metrics")).text
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("edgepart_dropped_total{"))
    return total


async def measure(quick: bool) -> tuple[float, list[Run], float, float]:
    seconds = 30.0 if quick else 120.0
    timeout_s = 10.0 if quick else 20.0
    body = frame_body()
    root = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    runtime = LocalRuntime(root)
    limits = httpx.Limits(max_connections=4000, max_keepalive_connections=200)
    runs: list[Run] = []
    cap = 0.0
    async with httpx.AsyncClient(timeout=60, trust_env=False, limits=limits) as client:
        for admission in ("auto", "off"):
            spec = deployment_from_dict(deployment(f"overload-{admission}", admission, timeout_s))
            state = await runtime.up(spec, port=0, ready_timeout_s=600)
            try:
                url = state.gateway_url.rstrip("/")
                for _ in range(3):  # warm-up
                    await post(client, url, body, 60)
                if admission == "auto":  # capacity measured once, on the first deployment
                    cap = await capacity(client, url, body, 8.0 if quick else 20.0)
                run = Run(admission, seconds, OVERLOAD * cap,
                          partitions=sum(p.role == "partition" for p in state.processes))
                run.rss_start = rss_of(state)
                run.outcomes = await open_loop(client, url, body, run.offered_per_s, seconds, timeout_s, seed=16)
                run.rss_end = rss_of(state)
                run.dropped = await dropped_total(client, state)
                runs.append(run)
            finally:
                await runtime.down(state.name)
    return cap, runs, seconds, timeout_s


def main(quick: bool) -> None:
    cap, runs, seconds, timeout_s = run_on_service_loop(measure(quick))
    columns = [f"admission {r.admission}" for r in runs]
    rows: list[tuple[str, list[str]]] = [
        ("partitions", [str(r.partitions) for r in runs]),
        ("capacity (closed loop, req/s)", [f"{cap:.2f}"] * len(runs)),
        ("offered (Poisson, req/s)", [f"{r.offered_per_s:.2f}" for r in runs]),
        ("requests sent", [str(len(r.outcomes)) for r in runs]),
        ("answered 200", [str(r.count(200)) for r in runs]),
        ("refused 503", [str(r.count(503)) for r in runs]),
        ("503 reasons", [", ".join(f"{w} {n}" for w, n in r.reasons(503).items()) or "-" for r in runs]),
        ("timed out 504", [str(r.count(504)) for r in runs]),
        ("other (errors, client timeouts)", [", ".join(f"{w or 'HTTP'} {n}" for w, n in r.reasons(None).items())
                                             or "0" for r in runs]),
        ("goodput (req/s)", [f"{r.goodput:.2f}" for r in runs]),
        ("goodput / capacity", [f"{r.goodput / cap:.0%}" if cap else "-" for r in runs]),
        ("p50 answered (s)", [f"{quantile(r.latencies(200), 0.5):.2f}" for r in runs]),
        ("p99 answered (s)", [f"{quantile(r.latencies(200), 0.99):.2f}" for r in runs]),
        ("503 latency p99 / max (ms)", [f"{quantile(r.latencies(503), 0.99) * 1000:.0f} / "
                                        f"{max(r.latencies(503), default=float('nan')) * 1000:.0f}" for r in runs]),
        ("work dropped at partitions", [f"{r.dropped:.0f}" for r in runs]),
    ]
    for proc in runs[0].rss_start:
        rows.append((f"RSS {proc} start -> end (MiB)",
                     [f"{r.rss_start.get(proc, float('nan')):.0f} -> {r.rss_end.get(proc, float('nan')):.0f}"
                      for r in runs]))
    lines = ["# Overload: goodput at 2x capacity, admission auto vs off", "",
             f"SqueezeNet 1.1 in 3 pipeline partitions, local processes; {seconds:g} s of Poisson arrivals at "
             f"{OVERLOAD:g}x the capacity measured closed-loop in the same run; request timeout {timeout_s:g} s.", "",
             "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    print("\n".join(lines), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overload.md").write_text("\n".join(lines) + "\n")
