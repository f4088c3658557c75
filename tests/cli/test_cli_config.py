"""``streamsynth config example`` and ``config validate``."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from streamsynth.cli.main import app
from streamsynth.config import EXAMPLE_CONFIG


def test_example_prints_the_annotated_example(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "example"])
    assert result.exit_code == 0
    assert result.stdout == EXAMPLE_CONFIG


def test_example_written_to_a_file_validates(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "streamsynth.yaml"
    assert runner.invoke(app, ["config", "example", "-o", str(target)]).exit_code == 0
    assert target.read_text() == EXAMPLE_CONFIG
    result = runner.invoke(app, ["config", "validate", str(target)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"OK {target}")
    assert "diverse_qa -> synth.diverse_qa" in result.stdout


def test_validate_names_every_bad_field(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "kafka: {bootstrap_servers: x, input_topic: docs}\n"
        "llm: {model: m, base_url: 'ftp://nowhere', max_concurrency: 0}\n"
        "stages: [{task: summarize, output_topic: out}]\n"
    )
    result = runner.invoke(app, ["config", "validate", str(cfg)])
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith("error: invalid configuration:")
    for field in ("kafka.dlq_topic", "llm.max_concurrency", "stages.0.task"):
        assert field in err, field
    assert "Traceback" not in err


def test_validate_applies_environment_overrides(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "streamsynth.yaml"
    cfg.write_text(EXAMPLE_CONFIG)
    result = runner.invoke(
        app,
        ["config", "validate", str(cfg)],
        env={"STREAMSYNTH_KAFKA__BOOTSTRAP_SERVERS": "kafka-0.internal:9093"},
    )
    assert result.exit_code == 0, result.stderr
    assert "kafka-0.internal:9093" in result.stdout
