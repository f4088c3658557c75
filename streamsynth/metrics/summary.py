"""A periodic one-line progress summary for people watching a worker in a terminal.

It reads the same instruments Prometheus scrapes, so the console and the
dashboard never disagree. Formatting is a pure function of two snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.metrics import MetricWrapperBase
from rich.console import Console

from streamsynth.metrics.registry import Metrics


@dataclass(frozen=True)
class StageTotals:
    """What became of the rows one stage received, cumulative."""

    stage: str
    produced: float = 0.0
    skipped: float = 0.0
    filtered: float = 0.0
    dlq: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Cumulative totals at one moment (``at`` is a monotonic time in seconds)."""

    at: float
    consumed: float = 0.0
    produced: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    lag: float = 0.0
    dlq: float = 0.0
    llm_errors: float = 0.0
    cost_usd: float = 0.0
    inflight: float = 0.0
    #: Per stage of the graph (only stages with a non-zero total): shown at the line's end.
    stages: tuple[StageTotals, ...] = field(default=(), compare=False)


def _sum(
    instrument: MetricWrapperBase,
    sample_suffix: str = "",
    keep: Callable[[dict[str, str]], bool] | None = None,
) -> float:
    """Sum of one instrument's samples across all label values (``_total`` for counters)."""
    total = 0.0
    for family in instrument.collect():
        for sample in family.samples:
            if sample.name == family.name + sample_suffix and (keep is None or keep(sample.labels)):
                total += sample.value
    return total


def _by_stage(instrument: MetricWrapperBase) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in instrument.collect():
        for sample in family.samples:
            if sample.name == family.name + "_total":
                stage = sample.labels.get("stage", "")
                totals[stage] = totals.get(stage, 0.0) + sample.value
    return totals


def stage_totals(metrics: Metrics) -> tuple[StageTotals, ...]:
    """Produced, skipped, filtered and dead-lettered rows per stage, by stage name."""
    m = metrics
    produced = _by_stage(m.records_produced)
    skipped = _by_stage(m.records_skipped)
    filtered = _by_stage(m.records_filtered)
    dlq = _by_stage(m.records_dlq)
    names = sorted({*produced, *skipped, *filtered, *dlq})
    return tuple(
        StageTotals(
            name,
            produced.get(name, 0.0),
            skipped.get(name, 0.0),
            filtered.get(name, 0.0),
            dlq.get(name, 0.0),
        )
        for name in names
    )


def take_snapshot(metrics: Metrics, at: float | None = None) -> Snapshot:
    m = metrics
    return Snapshot(
        at=time.monotonic() if at is None else at,
        consumed=_sum(m.records_consumed, "_total"),
        produced=_sum(m.records_produced, "_total"),
        tokens_in=_sum(m.llm_tokens, "_total", lambda lb: lb.get("type") == "input"),
        tokens_out=_sum(m.llm_tokens, "_total", lambda lb: lb.get("type") == "output"),
        lag=_sum(m.consumer_lag),
        dlq=_sum(m.records_dlq, "_total"),
        # Failed logical operations (after retries), not retried attempts.
        llm_errors=_sum(m.gen_ai_duration, "_count", lambda lb: lb.get("error_type", "") != ""),
        cost_usd=_sum(m.llm_cost, "_total"),
        inflight=_sum(m.inflight_records),
        stages=stage_totals(m),
    )


def _human(value: float) -> str:
    """Three significant figures with a k/M suffix: 950, 1.2k, 34.5k, 1.20M."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            scaled = value / threshold
            return f"{scaled:.3g}{suffix}" if scaled < 1000 else f"{scaled:.0f}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def _rate(prev: float, cur: float, seconds: float) -> float:
    # A counter can only go down when a registry is recreated; show 0 rather than negative.
    return max(0.0, cur - prev) / seconds if seconds > 0 else 0.0


def format_summary(prev: Snapshot, cur: Snapshot) -> str:
    """One line: rates over the interval between ``prev`` and ``cur``, totals where useful."""
    dt = cur.at - prev.at
    new_dlq = max(0.0, cur.dlq - prev.dlq)
    new_errors = max(0.0, cur.llm_errors - prev.llm_errors)
    parts = [
        f"records/s in {_human(_rate(prev.consumed, cur.consumed, dt))}"
        f" out {_human(_rate(prev.produced, cur.produced, dt))}",
        f"tokens/s in {_human(_rate(prev.tokens_in, cur.tokens_in, dt))}"
        f" out {_human(_rate(prev.tokens_out, cur.tokens_out, dt))}",
        f"lag {_human(cur.lag)}",
        f"inflight {_human(cur.inflight)}",
        f"dlq {_human(cur.dlq)} (+{_human(new_dlq)})",
        f"llm errors {_human(cur.llm_errors)} (+{_human(new_errors)})",
        f"cost ${cur.cost_usd:.4f}",
    ]
    if cur.stages:
        parts.append("stages " + "; ".join(_stage_part(t) for t in cur.stages))
    return " | ".join(parts)


def _stage_part(t: StageTotals) -> str:
    return (
        f"{t.stage} out {_human(t.produced)} skip {_human(t.skipped)}"
        f" filt {_human(t.filtered)} dlq {_human(t.dlq)}"
    )


def is_interactive(stream: object = None) -> bool:
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ConsoleSummary:
    """Prints :func:`format_summary` every ``interval_s`` seconds.

    Without an explicit ``console`` it prints only when stdout is a terminal:
    piped or containerised output belongs to the JSON logs, not to progress lines.
    """

    def __init__(
        self, metrics: Metrics, interval_s: float = 10.0, console: Console | None = None
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.metrics = metrics
        self.interval_s = interval_s
        self.enabled = console is not None or is_interactive()
        self.console = console if console is not None else Console(highlight=False)
        self.lines: int = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="streamsynth-console-summary"
            )

    def emit(self, prev: Snapshot) -> Snapshot:
        """Print one line covering the time since ``prev``; returns the new snapshot."""
        cur = take_snapshot(self.metrics)
        self.console.print(format_summary(prev, cur), markup=False, soft_wrap=True)
        self.lines += 1
        return cur

    async def _run(self) -> None:
        prev = take_snapshot(self.metrics)
        while True:
            await asyncio.sleep(self.interval_s)
            prev = self.emit(prev)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
