"""How the CLI reports failures: one red line on stderr and a meaningful exit code.

A user's mistake (a bad option, a missing file, an invalid config) exits 2; a
runtime failure (a broker or an LLM endpoint that cannot be reached) exits 1.
Neither prints a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from streamsynth.errors import BrokerUnavailableError, ConfigError, StreamsynthError

# Recent typer releases vendor click as ``typer._click``; older ones use click itself.
try:
    from typer._click import exceptions as click_exceptions  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions  # type: ignore[no-redef,unused-ignore]

ClickException: type[Exception] = click_exceptions.ClickException
UsageError: type[Exception] = click_exceptions.UsageError
NoArgsIsHelpError: type[Exception] = click_exceptions.NoArgsIsHelpError
#: typer.Abort is click's Abort in older releases and typer's own in newer ones.
ABORTS: tuple[type[BaseException], ...] = (
    typer.Abort,
    getattr(click_exceptions, "Abort", typer.Abort),
)

USAGE = 2
RUNTIME = 1
INTERRUPTED = 130


class CliError(StreamsynthError):
    """A failure the CLI explains in one line (``code``: 2 usage, 1 runtime)."""

    error_type = "cli"

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def err_console() -> Console:
    # soft_wrap: the error must stay one line whatever the terminal width.
    return Console(stderr=True, soft_wrap=True, highlight=False)


def one_line(text: str) -> str:
    """Collapse a multi-line message (pydantic, aiokafka) into one line."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts) if parts else type(text).__name__


def fail(message: str, code: int) -> NoReturn:
    err_console().print(f"[bold red]error:[/] [red]{escape(one_line(message))}[/]")
    sys.exit(code)


def _runtime_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "something we talk to is unreachable or broken"."""
    from aiohttp import ClientError
    from aiokafka.errors import KafkaError

    from streamsynth.llm.errors import LLMError

    return (BrokerUnavailableError, KafkaError, ClientError, LLMError, TimeoutError)


def describe(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code for a known failure; None for a bug."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, ConfigError):
        return str(exc), USAGE
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or str(exc)
        return f"file not found: {name}", USAGE
    if isinstance(exc, IsADirectoryError | PermissionError):
        return f"cannot open {exc.filename}: {exc.strerror}", USAGE
    if isinstance(exc, _runtime_types()):
        text = str(exc) or type(exc).__name__
        return f"{type(exc).__name__}: {text}", RUNTIME
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}", RUNTIME
    return None


def usage_message(exc: Any) -> str:
    """click's usage error as one line, pointing at the right ``--help``."""
    message = exc.format_message()
    ctx: Any = getattr(exc, "ctx", None)
    if isinstance(exc, UsageError) and ctx is not None:
        return f"{one_line(message)} (see '{ctx.command_path} --help')"
    return one_line(message)
