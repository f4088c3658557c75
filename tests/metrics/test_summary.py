"""The console summary line: a pure formatter, fed by the real instruments."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from streamsynth.metrics.registry import Metrics
from streamsynth.metrics.summary import ConsoleSummary, Snapshot, format_summary, take_snapshot


def test_format_rates_and_totals() -> None:
    prev = Snapshot(at=100.0, consumed=1_000, produced=500, tokens_in=10_000, tokens_out=4_000,
                    dlq=2, llm_errors=1, cost_usd=0.5)  # fmt: skip
    cur = Snapshot(at=110.0, consumed=1_250, produced=1_000, tokens_in=160_000, tokens_out=16_000,
                   lag=12_345, dlq=5, llm_errors=1, cost_usd=0.61234, inflight=64)  # fmt: skip
    line = format_summary(prev, cur)
    assert line == (
        "records/s in 25 out 50 | tokens/s in 15k out 1.2k | lag 12.3k | inflight 64"
        " | dlq 5 (+3) | llm errors 1 (+0) | cost $0.6123"
    )
    assert "\n" not in line


def test_format_survives_zero_interval_and_counter_reset() -> None:
    a = Snapshot(at=5.0, consumed=100, dlq=7)
    line = format_summary(a, Snapshot(at=5.0, consumed=50, dlq=1))
    assert line.startswith("records/s in 0 out 0 |")
    assert "dlq 1 (+0)" in line


def test_snapshot_reads_the_instruments() -> None:
    m = Metrics()
    m.records_consumed.labels("a").inc(10)
    m.records_consumed.labels("b").inc(5)
    m.records_produced.labels("qa", "out").inc(7)
    m.llm_tokens.labels("qa", "m", "input").inc(300)
    m.llm_tokens.labels("kl", "m", "input").inc(100)
    m.llm_tokens.labels("qa", "m", "output").inc(50)
    m.consumer_lag.labels("a", "0").set(4)
    m.consumer_lag.labels("a", "1").set(6)
    m.records_dlq.labels("qa", "malformed").inc()
    m.gen_ai_duration.labels("chat", "openai", "m", "qa", "").observe(0.1)
    m.gen_ai_duration.labels("chat", "openai", "m", "qa", "http_5xx").observe(0.1)
    m.llm_cost.labels("qa", "m").inc(0.25)
    m.inflight_records.set(3)
    snap = take_snapshot(m, at=1.0)
    assert snap == Snapshot(at=1.0, consumed=15, produced=7, tokens_in=400, tokens_out=50,
                            lag=10, dlq=1, llm_errors=1, cost_usd=0.25, inflight=3)  # fmt: skip


def test_emit_prints_one_line() -> None:
    m = Metrics()
    out = io.StringIO()
    summary = ConsoleSummary(m, 1.0, console=Console(file=out, width=200))
    start = take_snapshot(m)
    m.records_consumed.labels("a").inc(10)
    summary.emit(start)
    (line,) = out.getvalue().splitlines()
    assert line.startswith("records/s in ") and "| lag 0 |" in line


async def test_periodic_task_prints_and_stops() -> None:
    m = Metrics()
    out = io.StringIO()
    summary = ConsoleSummary(m, 0.02, console=Console(file=out, width=200))
    summary.start()
    try:
        for _ in range(200):  # bounded: at most ~2 s
            if summary.lines >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await summary.stop()
    assert summary.lines >= 2
    printed = summary.lines
    await asyncio.sleep(0.05)
    assert summary.lines == printed  # stopped means stopped


def test_not_interactive_without_a_tty(capsys: object) -> None:
    # Under pytest stdout is captured, not a terminal: the summary stays silent.
    assert ConsoleSummary(Metrics(), 1.0).enabled is False
