"""Pieces shared by several commands: the Kafka options, progress bars, client start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

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

if TYPE_CHECKING:
    from streamsynth.config import Settings
    from streamsynth.kafka.connection import KafkaConnection

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers, host:port[,host:port...] "
        f"(default: the --config file's, else {DEFAULT_BOOTSTRAP}).",
        show_envvar=True,
    ),
]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="STREAMSYNTH_CONFIG",
        help="A worker configuration (YAML), as given to 'streamsynth run': its kafka "
        "section (servers, SASL, SSL) and record fields are used; STREAMSYNTH_* "
        "environment variables override it.",
        show_envvar=True,
    ),
]

#: Environment variables that set the connection when no --config is given.
ENV_PREFIX = "STREAMSYNTH_KAFKA__"


@dataclass(frozen=True)
class KafkaTarget:
    """How a command reaches Kafka, and the worker config it came from (if any)."""

    connection: KafkaConnection
    settings: Settings | None = None


def kafka_target(config: Path | None, bootstrap: str | None, *, client_id: str) -> KafkaTarget:
    """The connection from ``--config`` (env overrides apply) or from the environment.

    ``--bootstrap-servers`` wins over both. Without a config file the security
    settings come from the same ``STREAMSYNTH_KAFKA__*`` variables that override
    a config file, so one environment serves ``run``, ``produce`` and ``consume``.
    """
    from streamsynth.config import load_settings
    from streamsynth.kafka.connection import KafkaConnection

    overrides: dict[str, Any] = {"client_id": client_id}
    if bootstrap:
        overrides["bootstrap_servers"] = check_bootstrap(bootstrap)
    if config is not None:
        settings = load_settings(config)
        return KafkaTarget(KafkaConnection.from_settings(settings.kafka, **overrides), settings)
    fields = _env_fields()
    fields.setdefault("bootstrap_servers", DEFAULT_BOOTSTRAP)
    fields.update(overrides)
    return KafkaTarget(_validated(fields))


def _env_fields() -> dict[str, Any]:
    from streamsynth.kafka.connection import KafkaConnection

    fields = {}
    for name in KafkaConnection.model_fields:
        value = os.environ.get(f"{ENV_PREFIX}{name.upper()}")
        if value is not None and name != "client_id":
            fields[name] = value
    return fields


def _validated(fields: dict[str, Any]) -> KafkaConnection:
    from pydantic import ValidationError

    from streamsynth.kafka.connection import KafkaConnection

    try:
        return KafkaConnection(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper() or '*'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise CliError(f"invalid Kafka settings: {problems}", USAGE) from None


def check_bootstrap(value: str) -> str:
    """Reject an address aiokafka would only fail on later, with a worse message."""
    from streamsynth.checks import check_bootstrap_servers

    try:
        check_bootstrap_servers(value)  # the rule config loading applies
    except ValueError as exc:
        raise CliError(f"--bootstrap-servers: {exc}", USAGE) from None
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


async def start_kafka_client(client: _Startable, conn: KafkaConnection, timeout_s: float) -> None:
    """Start an aiokafka client, turning an unreachable broker into a one-line error."""
    from aiokafka.errors import KafkaError

    quiet_kafka_logs()
    try:
        await _start(client, timeout_s)
    except (TimeoutError, OSError) as exc:
        raise unreachable(conn, exc) from exc
    except KafkaError as exc:
        raise kafka_failure(conn, exc) from exc


def unreachable(conn: KafkaConnection, exc: BaseException) -> CliError:
    """The one message for "cannot reach the broker" (a failed login looks the same)."""
    hint = "is it running? ('streamsynth broker' starts a local one)"
    if conn.security_protocol != "PLAINTEXT":
        hint = f"is it running, and do its {conn.security_protocol} settings match?"
    return CliError(
        f"cannot reach the Kafka broker at {conn.bootstrap_servers} ({type(exc).__name__}); {hint}",
        RUNTIME,
    )


def kafka_failure(conn: KafkaConnection, exc: BaseException) -> CliError:
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, KafkaConnectionError):
        return unreachable(conn, exc)
    return CliError(f"Kafka at {conn.bootstrap_servers}: {exc}", RUNTIME)
