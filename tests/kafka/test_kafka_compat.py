"""kafka/compat.py: on uvloop, a write to a closed connection is a broken connection.

Each test opens a real aiokafka connection to the test broker on a uvloop loop. Some
then lose the socket in the window a broker going away opens: the transport is closed
(its protocol was told) but aiokafka's read task has not noticed yet. The tests hold
that window open by stopping the read task first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

from streamsynth.engine.loop import run
from streamsynth.kafka.compat import guard_closed_writes
from streamsynth.kafka.connection import KafkaConnection

T = TypeVar("T")


def _on_uvloop(bootstrap: str, body: Callable[[AIOKafkaConnection], Awaitable[T]]) -> T:
    host, _, port = bootstrap.split(",")[0].rpartition(":")

    async def main() -> T:
        conn = await create_conn(host, int(port))
        try:
            return await body(conn)
        finally:
            conn.close()

    return run(main(), kind="uvloop")


async def _lose_the_socket(conn: AIOKafkaConnection) -> None:
    """Close the transport under aiokafka, its read task stopped first (see the doc)."""
    read_task = conn._read_task
    read_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await read_task
    conn._writer.transport.abort()
    await conn._closed_fut  # the protocol's connection_lost has run: the handle is closed


def _metadata() -> Any:
    return MetadataRequest([])


def test_uvloop_raises_on_a_closed_transport_where_aiokafka_expects_oserror(
    kafka_bootstrap: str,
) -> None:
    """The premise: aiokafka's own send lets uvloop's RuntimeError through. (When this
    fails, uvloop or aiokafka changed, and the guard may no longer be needed.)"""
    guard_closed_writes()
    unguarded = AIOKafkaConnection.send.__wrapped__  # type: ignore[attr-defined]

    async def body(conn: AIOKafkaConnection) -> None:
        await _lose_the_socket(conn)
        with pytest.raises(RuntimeError, match="closed"):
            unguarded(conn, _metadata())

    _on_uvloop(kafka_bootstrap, body)


def test_a_write_to_a_closed_connection_closes_it_with_a_kafka_error(
    kafka_bootstrap: str,
) -> None:
    guard_closed_writes()

    async def body(conn: AIOKafkaConnection) -> bool:
        assert conn.connected()
        await _lose_the_socket(conn)
        with pytest.raises(KafkaConnectionError, match="broken") as caught:
            await conn.send(_metadata())
        assert isinstance(caught.value.__cause__, RuntimeError)
        return bool(conn.connected())

    assert _on_uvloop(kafka_bootstrap, body) is False  # closed: the client reconnects


def test_an_open_connection_still_answers_and_other_runtime_errors_pass(
    kafka_bootstrap: str,
) -> None:
    guard_closed_writes()

    class Broken:
        def prepare(self, versions: Any) -> Any:
            raise RuntimeError("a bug in a request")

    async def body(conn: AIOKafkaConnection) -> bool:
        answer = await conn.send(_metadata())
        assert answer.brokers, answer
        with pytest.raises(RuntimeError, match="a bug in a request"):
            conn.send(Broken())
        return bool(conn.connected())

    assert _on_uvloop(kafka_bootstrap, body) is True


async def test_every_client_builder_applies_the_guard_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guard_closed_writes()
    original = AIOKafkaConnection.send.__wrapped__  # type: ignore[attr-defined]
    connection = KafkaConnection(bootstrap_servers="127.0.0.1:9")
    for build in (connection.producer, connection.consumer, connection.admin):
        monkeypatch.setattr(AIOKafkaConnection, "send", original)  # as aiokafka ships it
        build()
        guarded = AIOKafkaConnection.send
        assert getattr(guarded, "__wrapped__", None) is original, build
        build()  # again: not wrapped twice
        assert AIOKafkaConnection.send is guarded
