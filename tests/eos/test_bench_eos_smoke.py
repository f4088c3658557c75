"""``streamsynth bench eos`` runs end to end on a tiny workload (numbers are not checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# The repository's benchmarks/ package, not tests/benchmarks (as test_bench_smoke.py does).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import bench_eos

pytestmark = pytest.mark.integration


def test_eos_bench_smoke(tmp_path: Path) -> None:
    argv = ["--records", "300", "--paced", "60", "--paced-rate", "30", "--concurrency", "64"]
    assert bench_eos.main([*argv, "--max-s", "120", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eos.json").read_text())
    for mode in bench_eos.MODES:
        assert result[mode]["complete"] and result[mode]["records_per_s"] > 0
        assert 0 < result[mode]["latency_p50_s"] <= result[mode]["latency_p99_s"]
    assert result["ratio"] > 0
