"""``streamsynth bench``: finds the repository's benchmarks and hands them their arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from streamsynth.cli.main import app

REPO = Path(__file__).resolve().parents[2]


def test_list_shows_the_benchmarks_of_the_checkout(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["bench", "list"])
    assert result.exit_code == 0, result.stderr
    found = result.stdout.split()
    expected = sorted(
        p.stem.removeprefix("bench_").replace("_", "-") for p in REPO.glob("benchmarks/bench_*.py")
    )
    assert found == expected and "client-throughput" in found


def test_arguments_after_the_name_reach_the_benchmark(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["bench", "client-throughput", "--", "--help"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("usage: streamsynth bench client-throughput")
    assert "--requests" in result.stdout


def test_unknown_benchmark_lists_the_choices(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    line = assert_one_line_error(runner.invoke(app, ["bench", "warp-drive"]), 2)
    assert "unknown benchmark 'warp-drive'" in line and "client-throughput" in line
