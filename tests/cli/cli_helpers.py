"""Assertions shared by the CLI tests."""

from __future__ import annotations

from typer.testing import Result


def assert_one_line_error(result: Result, code: int) -> str:
    """The command failed with ``code`` and said why in one line, without a traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]
