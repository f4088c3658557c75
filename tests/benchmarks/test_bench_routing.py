"""Smoke run of ``bench routing`` at a tiny size: both sides run end to end, the JSON is sane."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import bench_routing

pytestmark = pytest.mark.integration


def test_routing_smoke(tmp_path: Path) -> None:
    argv = ["--quick", "--documents", "20", "--stages", "8", "--prefix-words", "400"]
    argv += ["--inflight", "32", "--cache-blocks", "120", "--max-s", "60"]
    argv += ["--out-dir", str(tmp_path)]
    assert bench_routing.main(argv) == 0
    r = json.loads((tmp_path / "routing.json").read_text())
    assert r["benchmark"] == "routing"
    sides = r["sides"]
    assert set(sides) == {"prefix_affinity", "least_loaded"}
    for side in sides.values():
        assert side["answers"] == 20 * 8
        assert 0.0 <= side["hit_rate"] <= 1.0 and side["goodput_answers_per_s"] > 0
        assert sum(side["shares"]) == pytest.approx(1.0, abs=0.01)
        assert side["p99_latency_s"] >= side["p50_latency_s"] > 0
    # Eight prefixes, caches that hold about three each: only affinity keeps them.
    assert sides["prefix_affinity"]["hit_rate"] > sides["least_loaded"]["hit_rate"]
    assert r["goodput_ratio"] == pytest.approx(
        sides["prefix_affinity"]["goodput_answers_per_s"]
        / sides["least_loaded"]["goodput_answers_per_s"]
    )
