"""Smoke run of ``bench fleet`` at a tiny size: it runs end to end, its JSON is sane."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import bench_fleet

pytestmark = pytest.mark.integration


def test_fleet_smoke(tmp_path: Path) -> None:
    argv = ["--records", "600", "--replicas", "2", "--max-num-seqs", "16", "--max-tokens", "16"]
    argv += ["--max-concurrency", "64", "--max-inflight", "256", "--capacity-s", "2"]
    argv += ["--warm-s", "1", "--partitions", "2", "--max-s", "90", "--out-dir", str(tmp_path)]
    assert bench_fleet.main(argv) == 0
    r = json.loads((tmp_path / "fleet.json").read_text())
    assert r["benchmark"] == "fleet"
    assert r["completed"] == 600 and r["dlq"] == 0
    assert r["knee"] == 32 and r["capacity_tokens_per_s"] > 0
    # Both sides measured on the same servers: a ratio, not an absolute, is asserted.
    assert 0.1 < r["goodput_ratio"] < 1.5
    assert 1 <= r["limit_min"] <= r["limit_max"] <= 128
    assert r["unloaded_latency_s"] > 0 and r["p99_latency_s"] >= r["p50_latency_s"] > 0
    # No honest measurement beats the token model's bound (a busy machine falls short).
    assert 0.0 < r["capacity_vs_model_bound"] < 1.15
    assert r["tokens_trace"] and r["running_mean"] > 0
