"""Every command's --help works and documents every option it accepts."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from streamsynth.cli.main import app

COMMANDS = [
    [],
    ["run"],
    ["produce"],
    ["consume"],
    ["broker"],
    ["llm-sim"],
    ["config"],
    ["config", "validate"],
    ["config", "example"],
    ["demo"],
    ["bench"],
]


def _command(path: list[str]) -> Any:
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "streamsynth")
def test_help_lists_every_option_and_argument(runner: CliRunner, path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("Usage: ")
    cmd = _command(path)
    assert cmd.help, f"{path} has no description"
    for param in cmd.params:
        if param.param_type_name == "option":
            for opt in [*param.opts, *param.secondary_opts]:
                assert opt in out, f"{opt} missing from the help of {path}"
            if param.name != "help":
                assert param.help, f"option {param.name} of {path} has no help text"
        else:
            assert param.help, f"argument {param.name} of {path} has no help text"
    for sub in getattr(cmd, "commands", {}):
        assert sub in out


def test_top_level_help_names_every_command(runner: CliRunner) -> None:
    out = runner.invoke(app, ["--help"]).stdout
    for name in ("run", "produce", "consume", "broker", "llm-sim", "config", "demo", "bench"):
        assert f"  {name} " in out


def test_group_without_a_command_shows_its_help(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "validate" in result.stderr and "example" in result.stderr
