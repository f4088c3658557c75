"""The worker process, started the two ways it is started: ``streamsynth run`` (what the
Dockerfile, compose and Helm run) and ``python -m streamsynth.kafka``.

Both go through :mod:`streamsynth.kafka.runtime`; each test runs against both, so the
process that ships is the one under test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamsynth.kafka.runtime import one_line

_SCRIPT = Path(sys.executable).parent / "streamsynth"
ENTRIES = {
    # The installed console script, as the container runs it; else the same app by module.
    "streamsynth run": (
        [str(_SCRIPT), "run"]
        if _SCRIPT.exists()
        else [sys.executable, "-m", "streamsynth.cli.main", "run"]
    ),
    "python -m streamsynth.kafka": [sys.executable, "-m", "streamsynth.kafka"],
}


def _config(bootstrap: str, **sections: Any) -> dict[str, Any]:
    base = uuid.uuid4().hex[:8]
    cfg: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"rt-{base}",
            "input_topic": f"rt-{base}.in",
            "dlq_topic": f"rt-{base}.dlq",
        },
        # Never contacted in these tests: the process stops before any request.
        "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "cache": {"kind": "none"}},
        "stages": [
            {
                "task": "custom",
                "prompt": "Summarize:\n\n{document}",
                "output_field": "summary",
                "output_topic": f"rt-{base}.out",
            }
        ],
        "metrics": {"enabled": False},
        "logging": {"level": "INFO", "format": "json"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def _start(entry: str, cfg: dict[str, Any], tmp_path: Path) -> subprocess.Popen[str]:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNTH_")}
    return subprocess.Popen(
        [*ENTRIES[entry], "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask.split()[1], 16) & (1 << (signum - 1)))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_sigterm_during_start_up_exits_0_within_2s_without_joining(
    entry: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    proc = _start(entry, _config(kafka_bootstrap), tmp_path)
    try:
        # Python itself catches only SIGINT; a SIGTERM handler means the capture is in
        # place, and the worker is still importing (it takes far longer than a poll).
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the early SIGTERM handler never appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    assert took < 2.0
    logs = out + err
    assert "Traceback" not in logs
    assert "worker started" not in logs and "partitions assigned" not in logs


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_invalid_config_exits_2_with_one_error_line(entry: str, tmp_path: Path) -> None:
    cfg = _config("127.0.0.1:1", worker={"max_inflight_records": 0})
    proc = _start(entry, cfg, tmp_path)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "worker.max_inflight_records" in lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_config_error_found_while_starting_exits_2(entry: str, tmp_path: Path) -> None:
    # Valid YAML, but the key's variable is unset: found when the LLM client is built,
    # before the broker (an unreachable address here) is contacted.
    var = f"STREAMSYNTH_TEST_UNSET_{uuid.uuid4().hex[:6].upper()}"
    cfg = _config("127.0.0.1:1", llm={"api_key_env": var})
    proc = _start(entry, cfg, tmp_path)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: llm.api_key_env: environment variable {var} unset"]
    assert "Traceback" not in out + err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_unreachable_broker_exits_1_with_one_error_line(entry: str, tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{_free_port()}"  # nothing listens there
    proc = _start(entry, _config(bootstrap), tmp_path)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach the Kafka broker at {bootstrap}: KafkaConnectionError"]
    assert "Traceback" not in out + err


def test_metrics_port_in_use_exits_1_with_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _config("127.0.0.1:1", metrics={"enabled": True, "port": port})
        proc = _start("streamsynth run", cfg, tmp_path)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            _stop(proc)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "address already in use" in errors[0].lower(), err
    assert "Traceback" not in out + err


def test_one_line_keeps_every_field() -> None:
    text = "invalid configuration:\n  kafka.dlq_topic: Field required\n  llm.model: bad"
    assert one_line(text) == (
        "invalid configuration: kafka.dlq_topic: Field required; llm.model: bad"
    )
    assert one_line("cannot read config file x: No such file") == (
        "cannot read config file x: No such file"
    )


def test_failure_line_never_carries_credentials_of_the_failing_client() -> None:
    """The exit-1 line goes to stderr past the logging filter, so it is scrubbed itself."""
    from streamsynth.config import settings_from_dict
    from streamsynth.kafka.runtime import failure_message

    settings = settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": "127.0.0.1:9092",
                "input_topic": "in",
                "dlq_topic": "dlq",
            },
            "llm": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"},
            "stages": [
                {
                    "task": "custom",
                    "prompt": "{document}",
                    "output_topic": "out",
                    "output_field": "answer",
                }
            ],
        }
    )
    exc = RuntimeError("cannot open https://user:s3cr3t-pass@proxy.example:8443/v1")
    line = failure_message(settings, exc)
    assert "s3cr3t-pass" not in line
    assert line.startswith("RuntimeError: ")


def test_the_worker_process_freezes_its_start_up_objects_and_collects_young_less_often() -> None:
    # In a child process: freezing and thresholds are process-wide.
    probe = (
        "import gc\n"
        "from streamsynth.kafka.runtime import GC_YOUNG_THRESHOLD, tune_collector\n"
        "before = gc.get_threshold()\n"
        "tune_collector()\n"
        "print(gc.get_freeze_count(), *before, *gc.get_threshold(), GC_YOUNG_THRESHOLD)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    frozen, before, after, wanted = int(out[0]), out[1:4], out[4:7], out[7]
    assert frozen > 10_000  # the worker's modules: aiokafka, pydantic, the LLM stack
    assert after[0] == wanted != before[0]
    assert after[1:] == before[1:]
