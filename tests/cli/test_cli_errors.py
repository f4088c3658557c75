"""Bad input to every command: one line on stderr, a non-zero exit, never a traceback.

Exit codes: 2 for the user's mistakes, 1 for things that cannot be reached at run time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from streamsynth.cli.main import app


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n')
    return path


USAGE_CASES = {
    "unknown command": ["frobnicate"],
    "run without --config": ["run"],
    "run with a missing config": ["run", "--config", "/nonexistent/streamsynth.yaml"],
    "produce without inputs": ["produce", "--topic", "t"],
    "produce without --topic": ["produce", "x.jsonl"],
    "produce with an unknown option": ["produce", "x.jsonl", "-t", "t", "--bogus"],
    "produce a missing file": ["produce", "/nonexistent/docs.jsonl", "-t", "t"],
    "produce to a malformed address": ["produce", "{docs}", "-t", "t", "-b", "nohostport"],
    "produce with a bad format": ["produce", "{docs}", "-t", "t", "--format", "xml"],
    "consume zero records": ["consume", "t", "--max-records", "0"],
    "consume parquet to stdout": ["consume", "t", "--format", "parquet"],
    "consume to a missing directory": ["consume", "t", "-o", "/nonexistent/dir/out.jsonl"],
    "broker with a bad topic spec": ["broker", "--topic", "docs:many"],
    "broker with a bad port": ["broker", "--port", "70000"],
    "llm-sim with a bad latency": ["llm-sim", "--latency", "sometimes"],
    "llm-sim with a rate above 1": ["llm-sim", "--rate-429", "1.5"],
    "config validate a missing file": ["config", "validate", "/nonexistent.yaml"],
    "config with an unknown subcommand": ["config", "lint"],
    "demo with zero records": ["demo", "--records", "0"],
    "demo with a missing model file": ["demo", "--model-path", "/nonexistent/model.gguf"],
    "bench an unknown benchmark": ["bench", "no-such-benchmark"],
}


@pytest.mark.parametrize("args", USAGE_CASES.values(), ids=USAGE_CASES.keys())
def test_usage_errors_exit_2_with_one_line(runner: CliRunner, docs: Path, args: list[str]) -> None:
    args = [a.replace("{docs}", str(docs)) for a in args]
    assert_one_line_error(runner.invoke(app, args), 2)


def test_bad_jsonl_line_is_named_and_nothing_is_sent(
    runner: CliRunner, tmp_path: Path, dead_bootstrap: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    # The broker address is dead: a validation error must come before any connection.
    line = assert_one_line_error(
        runner.invoke(app, ["produce", str(bad), "-t", "t", "-b", dead_bootstrap]), 2
    )
    assert f"{bad}:2" in line


def test_record_without_text_is_rejected(
    runner: CliRunner, tmp_path: Path, dead_bootstrap: str
) -> None:
    bad = tmp_path / "notext.jsonl"
    bad.write_text('{"id": "a", "body": "the text is elsewhere"}\n')
    args = ["produce", str(bad), "-t", "t", "-b", dead_bootstrap]
    line = assert_one_line_error(runner.invoke(app, args), 2)
    assert "'text'" in line and "--text-field" in line


def test_invalid_config_fails_run_in_one_line(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("kafka: {bootstrap_servers: x}\nllm: {model: m}\nstages: []\n")
    line = assert_one_line_error(runner.invoke(app, ["run", "--config", str(cfg)]), 2)
    assert "kafka.dlq_topic" in line


@pytest.mark.parametrize(
    "command",
    [["produce", "{docs}", "-t", "t", "--timeout", "5"], ["consume", "t", "--timeout", "5"]],
    ids=["produce", "consume"],
)
def test_unreachable_broker_exits_1(
    runner: CliRunner, docs: Path, dead_bootstrap: str, command: list[str]
) -> None:
    args = [a.replace("{docs}", str(docs)) for a in command] + ["-b", dead_bootstrap]
    line = assert_one_line_error(runner.invoke(app, args), 1)
    assert f"cannot reach the Kafka broker at {dead_bootstrap}" in line


def test_consume_missing_topic(runner: CliRunner, bootstrap: str) -> None:
    result = runner.invoke(app, ["consume", "no.such.topic", "-b", bootstrap])
    assert "does not exist" in assert_one_line_error(result, 2)


def test_broker_on_a_busy_port_exits_1(runner: CliRunner, busy_port: int) -> None:
    result = runner.invoke(app, ["broker", "--port", str(busy_port)])
    assert f"cannot listen on 127.0.0.1:{busy_port}" in assert_one_line_error(result, 1)


def test_llm_sim_on_a_busy_port_exits_1(runner: CliRunner, busy_port: int) -> None:
    result = runner.invoke(app, ["llm-sim", "--port", str(busy_port)])
    assert f"cannot listen on 127.0.0.1:{busy_port}" in assert_one_line_error(result, 1)


def test_config_example_does_not_overwrite(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "streamsynth.yaml"
    target.write_text("mine\n")
    result = runner.invoke(app, ["config", "example", "-o", str(target)])
    assert "--force" in assert_one_line_error(result, 2)
    assert target.read_text() == "mine\n"
