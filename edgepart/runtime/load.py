"""A load generator for several data sources: Poisson arrivals at each source, every answer accounted for.

`drive` sends `count` images to each source URL (POST /v1/ring/images), the gaps between one source's
images drawn from an exponential distribution at `rate` images per second (all at once when `rate` is
None), without waiting for answers. Every image ends in exactly one of: done (200 with a result frame),
rejected (503: the source's queue was full) or lost (anything else: a timeout, a lost connection, another
status). Per source it reports completion (the last answer after the first send), per-image time (send to
answer) and the counts; the paper's "processing time per image" is the completion time over the images done.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import torch

from edgepart.geometry import Region
from edgepart.partition_service.auth import Secret
from edgepart.partition_service.ring import IMAGES_PATH, STATE_PATH
from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame, frame_bytes, make_header

__all__ = ["LoadReport", "LoadSettings", "SourceLoadReport", "arrival_times", "drive"]


@dataclass(frozen=True)
class LoadSettings:
    rate: float | None = None  # images per second per source (Poisson); None: all at once
    count: int = 100  # images per source
    seed: int = 0
    timeout_s: float = 300.0  # per image
    keep_outputs: bool = False  # keep each image's input and output (to compare with the whole model)


@dataclass
class SourceLoadReport:
    url: str
    sent: int = 0
    done: int = 0
    rejected: int = 0
    lost: int = 0
    done_locally: int = 0
    completion_s: float = 0.0  # first send to last answer
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what the lost ones got
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (input, output) when kept

    @property
    def per_image_s(self) -> float:
        return self.completion_s / self.done if self.done else float("nan")

    @property
    def mean_latency_s(self) -> float:
        return statistics.fmean(self.latencies_s) if self.latencies_s else float("nan")


@dataclass(frozen=True)
class LoadReport:
    sources: tuple[SourceLoadReport, ...]
    total_s: float  # first send to last answer over every source

    @property
    def done(self) -> int:
        return sum(s.done for s in self.sources)

    @property
    def per_image_s(self) -> float:
        return self.total_s / self.done if self.done else float("nan")


def arrival_times(sources: int, settings: LoadSettings) -> list[list[float]]:
    """Each source's send times from the start: the first at 0, then exponential gaps at `rate`, drawn source
    after source from one generator seeded with `seed`, as the simulator draws them (`simulate_multisource`
    with the same seed sees the same arrivals)."""
    rng = random.Random(settings.seed)
    result = []
    for _ in range(sources):
        times, at = [], 0.0
        for _ in range(settings.count):
            times.append(at)
            if settings.rate is not None:
                at += rng.expovariate(settings.rate)
        result.append(times)
    return result


async def input_shape(url: str, client: httpx.AsyncClient) -> tuple[int, ...]:
    answer = await client.get(url + STATE_PATH)
    answer.raise_for_status()
    return tuple(answer.json()["input_shape"])


async def drive(urls: Sequence[str], secret: Secret, settings: LoadSettings,
                progress: Callable[[str], None] | None = None) -> LoadReport:
    """Drive every source in `urls` at once; see the module docstring."""
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=256)
    async with httpx.AsyncClient(trust_env=False, timeout=settings.timeout_s, limits=limits,
                                 headers={"authorization": secret.header}) as client:
        shapes = [await input_shape(u, client) for u in urls]
        reports = [SourceLoadReport(u) for u in urls]
        schedule = arrival_times(len(urls), settings)
        begin = time.monotonic()
        ends: list[float] = []

        async def one(report: SourceLoadReport, x: torch.Tensor, rid: str) -> None:
            body = frame_bytes(make_header(rid, x, Region.full(x.shape[1:]), -1, "client"), x)
            sent = time.monotonic()
            try:
                answer = await client.post(report.url + IMAGES_PATH, content=body,
                                           headers={"content-type": CONTENT_TYPE})
            except httpx.HTTPError as err:
                report.lost += 1
                report.failures.append(f"{rid}: {type(err).__name__}")
                return
            now = time.monotonic()
            ends.append(now)
            if answer.status_code == 200:
                report.done += 1
                report.done_locally += answer.headers.get("x-edgepart-local") == "1"
                report.latencies_s.append(now - sent)
                report.completion_s = max(report.completion_s, now - begin)
                if settings.keep_outputs:
                    report.outputs.append((x, decode_frame(answer.content).tensor))
            elif answer.status_code == 503:
                report.rejected += 1
            else:
                report.lost += 1
                report.failures.append(f"{rid}: HTTP {answer.status_code} {answer.text[:200]}")

        async def source(index: int) -> None:
            report = reports[index]
            gen = torch.Generator().manual_seed(settings.seed * 1000 + index)
            tasks = []
            for n, at in enumerate(schedule[index]):
                delay = begin + at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                x = torch.randn(shapes[index], generator=gen)
                report.sent += 1
                tasks.append(asyncio.create_task(one(report, x, f"load-{index}-{n}")))
            await asyncio.gather(*tasks)
            if progress is not None:
                progress(f"{report.url}: {report.done} done, {report.rejected} rejected, {report.lost} lost")

        await asyncio.gather(*(source(i) for i in range(len(urls))))
    return LoadReport(tuple(reports), max(ends, default=begin) - begin)


async def sources_of(urls: Sequence[str], secret: Secret) -> list[str]:
    """The URLs among `urls` whose worker is a source."""
    async with httpx.AsyncClient(trust_env=False, timeout=10.0, headers={"authorization": secret.header}) as client:
        found = []
        for url in urls:
            answer = await client.get(url + STATE_PATH)
            answer.raise_for_status()
            if answer.json()["source"]:
                found.append(url)
        return found


def report_table(report: LoadReport) -> list[list[str]]:
    rows = []
    for s in report.sources:
        latencies = sorted(s.latencies_s)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")
        rows.append([s.url, str(s.sent), str(s.done), str(s.done_locally), str(s.rejected), str(s.lost),
                     f"{s.completion_s:.2f}", f"{s.per_image_s * 1e3:.1f}", f"{s.mean_latency_s * 1e3:.1f}",
                     f"{p95 * 1e3:.1f}"])
    return rows


REPORT_HEADERS = ["source", "sent", "done", "local", "rejected", "lost", "completion s", "per image ms",
                  "mean ms", "p95 ms"]


async def load_command(urls: Sequence[str], settings: LoadSettings, *, deployment: str | None,
                       secret_file: str | None, echo: Callable[[str], None]) -> int:
    """`edgepart load`: drive the sources; 0 when nothing was lost (rejections are the bound at work)."""
    from edgepart.partition_service.auth import load_secret
    from edgepart.runtime.commands import table
    from edgepart.runtime.local import LocalRuntime, LocalRuntimeError

    runtime = LocalRuntime()
    state = None
    if not urls or secret_file is None:
        rings = [s for s in runtime.runs() if s.ring and (deployment is None or s.name == deployment)]
        if len(rings) != 1:
            raise LocalRuntimeError(
                "name the deployment with --deployment (deployments with sources up: "
                f"{[s.name for s in runtime.runs() if s.ring] or 'none'}), or give the source URLs and --secret-file")
        state = rings[0]
    secret = load_secret(secret_file) if secret_file is not None else load_secret(
        runtime.root / state.name / "secret")  # type: ignore[union-attr]
    targets = list(urls) or await sources_of(list(state.ring.values()), secret)  # type: ignore[union-attr]
    rate = f"Poisson {settings.rate:g}/s" if settings.rate else "all at once"
    echo(f"driving {len(targets)} sources: {settings.count} images each, {rate}")
    report = await drive(targets, secret, settings)
    echo(table(REPORT_HEADERS, report_table(report)))
    echo(f"all: {report.done} done in {report.total_s:.2f} s, {report.per_image_s * 1e3:.1f} ms per image; "
         f"rejected {sum(s.rejected for s in report.sources)}, lost {sum(s.lost for s in report.sources)}")
    for s in report.sources:
        for failure in s.failures[:5]:
            echo(f"lost: {failure}")
    return 1 if any(s.lost for s in report.sources) else 0
