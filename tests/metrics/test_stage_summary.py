"""The console summary's per-stage totals: produced, skipped, filtered, dead-lettered."""

from __future__ import annotations

from streamsynth.metrics.registry import Metrics
from streamsynth.metrics.summary import Snapshot, StageTotals, format_summary, take_snapshot


def test_snapshot_totals_each_stage_over_its_labels() -> None:
    m = Metrics()
    m.records_produced.labels("qa", "out.qa").inc(7)
    m.records_skipped.labels("qa").inc(3)
    m.records_skipped.labels("wiki").inc(10)
    m.records_filtered.labels("qa", "too_short").inc(2)
    m.records_filtered.labels("qa", "no_prefix").inc(1)
    m.records_dlq.labels("wiki", "http_5xx").inc()
    snap = take_snapshot(m, at=1.0)
    assert snap.stages == (
        StageTotals("qa", produced=7, skipped=3, filtered=3, dlq=0),
        StageTotals("wiki", produced=0, skipped=10, filtered=0, dlq=1),
    )


def test_the_line_ends_with_each_stage() -> None:
    stages = (StageTotals("qa", 1200, 40, 3, 0), StageTotals("wiki", 0, 1250, 0, 2))
    line = format_summary(Snapshot(at=0.0), Snapshot(at=10.0, stages=stages))
    assert line.endswith(
        " | stages qa out 1.2k skip 40 filt 3 dlq 0; wiki out 0 skip 1.25k filt 0 dlq 2"
    )
    assert "stages" not in format_summary(Snapshot(at=0.0), Snapshot(at=1.0))
