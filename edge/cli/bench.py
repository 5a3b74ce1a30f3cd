"""Speed and memory of the engine over a set of images: per-stage medians, throughput, peak RSS."""

from __future__ import annotations

import resource
import statistics
import sys
from dataclasses import dataclass
from typing import Iterable

from edge.cli.batch import ImageOutcome
from edge.daemon import allocator

STAGES = ("decode", "detect", "classify", "recognize", "total")


@dataclass(frozen=True)
class BenchReport:
    """Medians in milliseconds per stage, images per second, failures and peak RSS."""

    images: int
    failed: int
    medians_ms: dict[str, float]
    images_per_second: float
    peak_rss_mb: float
    malloc: str


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def summarise(outcomes: Iterable[ImageOutcome]) -> BenchReport:
    """Collect the timings of finished images into a report."""
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    done = failed = 0
    seconds = 0.0
    for outcome in outcomes:
        if outcome.result is None:
            failed += 1
            continue
        done += 1
        seconds += outcome.seconds
        for stage in STAGES:
            if stage in outcome.result.timings_ms:
                per_stage[stage].append(outcome.result.timings_ms[stage])
    medians = {s: round(statistics.median(v), 1) for s, v in per_stage.items() if v}
    rate = done / seconds if seconds else 0.0  # images read per second; failures apart
    return BenchReport(done + failed, failed, medians, round(rate, 2), round(peak_rss_mb(), 1),
                       allocator.active())


def format_report(report: BenchReport) -> str:
    """The report as an aligned table."""
    rows = [("stage", "median ms")] + [(s, f"{v:.1f}") for s, v in report.medians_ms.items()]
    width = max(len(r[0]) for r in rows) + 2
    table = "\n".join(f"{name:<{width}}{value:>10}" for name, value in rows)
    return (f"{table}\n\nimages      {report.images} ({report.failed} failed)\n"
            f"images/s    {report.images_per_second}\n"
            f"peak RSS    {report.peak_rss_mb} MB (malloc: {report.malloc})")
