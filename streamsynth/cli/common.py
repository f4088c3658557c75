"""Pieces shared by several commands: the broker option, progress bars, client start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Annotated, Protocol

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from streamsynth.cli.errors import RUNTIME, USAGE, CliError, err_console

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

BootstrapOption = Annotated[
    str,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers, host:port[,host:port...].",
        show_envvar=True,
    ),
]


def check_bootstrap(value: str) -> str:
    """Reject an address aiokafka would only fail on later, with a worse message."""
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"--bootstrap-servers: {part.strip()!r} is not host:port", USAGE)
    return value


def progress() -> Progress:
    """A progress display on stderr, so that stdout stays clean for data."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console(),
    )


class _Startable(Protocol):
    def start(self) -> Awaitable[None]: ...

    def stop(self) -> Awaitable[None]: ...


def quiet_kafka_logs() -> None:
    """aiokafka logs every failed connection attempt at ERROR: the CLI says it once, itself."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


async def _start(client: _Startable, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(client.start(), timeout=timeout_s)
    except BaseException:
        # A half-started client holds sockets and tasks; release them before reporting.
        with contextlib.suppress(Exception):
            await client.stop()
        raise


async def start_kafka_client(client: _Startable, bootstrap: str, timeout_s: float) -> None:
    """Start an aiokafka client, turning an unreachable broker into a one-line error."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    quiet_kafka_logs()
    try:
        await _start(client, timeout_s)
    except (KafkaConnectionError, TimeoutError, OSError) as exc:
        raise CliError(
            f"cannot reach the Kafka broker at {bootstrap} ({type(exc).__name__}); "
            "is it running? ('streamsynth broker' starts a local one)",
            RUNTIME,
        ) from exc
    except KafkaError as exc:
        raise CliError(f"Kafka at {bootstrap}: {exc}", RUNTIME) from exc
