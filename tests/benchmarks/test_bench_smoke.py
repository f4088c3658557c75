"""Smoke runs of the end-to-end benchmarks at tiny sizes: they run, and their JSON is sane.

Each run is real (embedded broker, simulator process, worker subprocesses), only
small and fast. The vs-curator run needs the NeMo Curator venv the benchmark
creates on first use (in the user cache); it creates it when it does not exist yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import (
    _common,
    bench_llm_bound,
    bench_memory,
    bench_scale,
    bench_vs_curator,
)

pytestmark = pytest.mark.integration


def _load(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name
    return data


def test_llm_bound_smoke(tmp_path: Path) -> None:
    argv = ["--records", "400", "--concurrency", "16", "--median-s", "0.05", "--p99-s", "0.2"]
    assert bench_llm_bound.main([*argv, "--max-s", "30", "--out-dir", str(tmp_path)]) == 0
    r = _load(tmp_path, "llm-bound")
    assert r["completed"] == 400 and r["dlq"] == 0
    assert r["simulator_requests"] == 400  # warm-up excluded, no retries
    assert r["simulator_max_inflight"] <= 16
    # The draws' mean is close to the analytic lognormal mean (400 samples).
    assert r["mean_latency_draws_s"] == pytest.approx(r["mean_latency_analytic_s"], rel=0.35)
    assert 0.3 < r["ratio"] < 1.3
    assert 0.1 < r["ratio_to_ideal_makespan"] <= 1.05


def test_memory_smoke(tmp_path: Path) -> None:
    argv = ["--checkpoints", "2000,6000", "--max-s", "40", "--out-dir", str(tmp_path)]
    assert bench_memory.main(argv) == 0
    r = _load(tmp_path, "memory")
    assert r["reached_all_checkpoints"] is True
    assert set(r["checkpoints"]) == {"2000", "6000"}
    assert r["checkpoints"]["6000"]["committed"] >= 6000
    assert 20 < r["peak_rss_mb"] < 1000
    assert isinstance(r["growth"], float)


def test_scale_smoke(tmp_path: Path) -> None:
    argv = ["--max-workers", "2", "--per-worker-records", "150", "--concurrency", "8"]
    assert bench_scale.main([*argv, "--latency-s", "0.05", "--out-dir", str(tmp_path)]) == 0
    r = _load(tmp_path, "scale")
    runs = r["runs"]
    assert [x["workers"] for x in runs] == [1, 2]
    assert runs[1]["partition_split"] == [6, 6]
    assert all(x["completed"] == x["records"] for x in runs)
    assert runs[0]["ratio"] == pytest.approx(1.0)
    assert 0.3 < runs[1]["ratio"] < 1.5


def test_vs_curator_smoke(tmp_path: Path) -> None:
    # The rival runs in its own venv; the first run on a machine creates it (~30 s).
    bench_vs_curator.ensure_venv(bench_vs_curator.DEFAULT_VENV)
    argv = ["--records", "64", "--batch-sizes", "32", "--passes", "2", "--concurrency", "32"]
    argv += ["--median-s", "0.02", "--p99-s", "0.1", "--out-dir", str(tmp_path)]
    assert bench_vs_curator.main(argv) == 0
    r = _load(tmp_path, "vs-curator")
    cur = r["curator"]["32"]
    assert cur["nemo_curator"] == "1.4.0"
    assert cur["records"] == 64 and cur["batches"] == 2
    assert cur["records_per_s"] > 0
    assert r["streamsynth"]["completed"] == 128
    assert r["ratios"]["32"]["steady"] > 0


def test_helpers() -> None:
    docs = _common.make_documents(3, seed=1)
    assert docs == _common.make_documents(3, seed=1)  # same set for both sides
    assert [d["id"] for d in docs] == ["doc-0", "doc-1", "doc-2"]
    assert _common.lognormal_mean(0.5, 5.0) == pytest.approx(0.816, abs=1e-3)
    # Two slots, draws 1,1,2: the third starts at t=1 and ends at t=3.
    assert _common.ideal_makespan([1.0, 1.0, 2.0], 2) == pytest.approx(3.0)
    assert _common.steady_rate([i / 10 for i in range(100)]) == pytest.approx(10.0)


def test_engine_smoke(tmp_path: Path) -> None:
    # Its own process: the benchmark sets the collector up as the worker process does
    # (gc.freeze and thresholds are process-wide).
    out = tmp_path / "engine.json"
    argv = [
        "-m",
        "benchmarks.bench_engine",
        "--records",
        "5000",
        "--batch",
        "200",
        "--timeout",
        "60",
    ]
    done = subprocess.run(
        [sys.executable, *argv, "--out", str(out)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    # Counted from the first output seen on: what came before the clock is not counted.
    assert 0 < r["records"] <= 5000
    assert r["records_per_s"] > 0 and r["records_per_cpu_s"] > 0
    ratio = r["records_per_s"] / r["target_records_per_s"]
    assert r["ratio_to_target"] == pytest.approx(ratio, rel=0.01)
    assert 0 < r["task_cpu_us"] < 1000
    # The split: the record path alone, and the rest of the worker's CPU per record.
    assert 0 < r["record_path_cpu_us"] < 1e6 / r["records_per_cpu_s"] * 10
    worker_us = 1e6 / r["records_per_cpu_s"]
    assert r["plumbing_cpu_us"] == pytest.approx(
        max(0.0, worker_us - r["record_path_cpu_us"]), abs=0.5
    )
    assert "records/s" in done.stdout and "a bare task costs" in done.stdout
    assert "the record path without Kafka" in done.stdout
