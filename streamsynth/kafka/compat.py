"""aiokafka on uvloop: a write to a closed connection is a broken connection.

aiokafka 0.14's ``AIOKafkaConnection.send`` (and its SASL twin) turns an ``OSError``
from ``writer.write`` into ``KafkaConnectionError`` after closing the connection, the
error every caller of aiokafka expects when a broker goes away. The window it guards
against is the one between the peer closing the socket and aiokafka's read task
noticing. asyncio's transport drops a write in that window silently; uvloop's raises
``RuntimeError`` ("the handler is closed"), which none of aiokafka's callers handle
(they catch ``KafkaError``): in a broker outage it once broke an orderly shutdown in
our outage test. :func:`guard_closed_writes` makes both loops behave the same: such a
``RuntimeError`` closes the connection and becomes ``KafkaConnectionError``, as an
``OSError`` there would. Any other ``RuntimeError`` is raised as it was.

:class:`~streamsynth.kafka.connection.KafkaConnection` applies it before it builds a
client, so every aiokafka client in the process is covered. It is idempotent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_GUARDED = "_streamsynth_closed_write_guard"


def guard_closed_writes() -> None:
    """Wrap aiokafka's connection writes (once per process; later calls do nothing)."""
    from aiokafka.conn import AIOKafkaConnection

    for name in ("send", "_send_sasl_token"):
        method = getattr(AIOKafkaConnection, name)
        if not getattr(method, _GUARDED, False):
            setattr(AIOKafkaConnection, name, _guarded(method))


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    from aiokafka.conn import CloseReason
    from aiokafka.errors import KafkaConnectionError

    @functools.wraps(method)
    def write(conn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(conn, *args, **kwargs)
        except RuntimeError as err:
            writer = conn._writer
            if writer is None or not writer.transport.is_closing():
                raise  # not the closed transport: a real bug, let it show
            conn.close(reason=CloseReason.CONNECTION_BROKEN, exc=err)
            raise KafkaConnectionError(
                f"Connection at {conn.host}:{conn.port} broken: {err}"
            ) from err

    setattr(write, _GUARDED, True)
    return write
