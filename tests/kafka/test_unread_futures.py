"""The worker's loop handler for aiokafka's unread failed futures (kafka/runtime.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from streamsynth.kafka.runtime import LOGGER, UNREAD_FUTURE, quiet_unread_kafka_futures


def _drop_failed(loop: asyncio.AbstractEventLoop, error: BaseException) -> None:
    """A failed future that nobody reads, collected at once (no cycle holds it)."""
    future: asyncio.Future[None] = loop.create_future()
    future.set_exception(error)


async def _raises(error: BaseException) -> None:
    raise error


async def test_only_unread_kafka_futures_are_quieted(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    reached: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reached.append(context))  # the one before
    try:
        quiet_unread_kafka_futures(loop)
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            _drop_failed(loop, KafkaTimeoutError())
            _drop_failed(loop, ValueError("ours"))
            task = loop.create_task(_raises(KafkaTimeoutError()))
            await asyncio.wait([task])
            del task  # an unread task is a bug of ours: it stays loud
    finally:
        loop.set_exception_handler(None)
    passed = [(c["message"], type(c["exception"]).__name__) for c in reached]
    assert passed == [
        (UNREAD_FUTURE, "ValueError"),
        ("Task exception was never retrieved", "KafkaTimeoutError"),
    ]
    quiet = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.getMessage(), r.__dict__["error"]) for r in quiet] == [
        (logging.DEBUG, "an unread failed Kafka future", "KafkaTimeoutError")
    ]


async def test_without_a_handler_before_the_default_one_reports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        quiet_unread_kafka_futures(loop)
        with caplog.at_level(logging.DEBUG):
            _drop_failed(loop, ValueError("ours"))
    finally:
        loop.set_exception_handler(None)
    loud = [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR]
    assert [r.getMessage().splitlines()[0] for r in loud] == [UNREAD_FUTURE]
    assert "ValueError('ours')" in loud[0].getMessage()
