"""The shutdown deadline and its steps (kafka/shutdown.py), without a broker."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamsynth.kafka.shutdown import MIN_STEP_S, Deadline, Shutdown


class _Client:
    def __init__(self, hangs: bool) -> None:
        self.hangs = hangs
        self.given: float | None = None

    async def stop(self, timeout_s: float | None = None) -> bool:
        self.given = timeout_s
        return not self.hangs


def test_the_drain_leaves_the_later_steps_a_reserve() -> None:
    now = [100.0]
    d = Deadline(10, clock=lambda: now[0])
    assert d.drain_s() == 8.0
    assert Deadline(60).drain_s() == 58.0  # at most 2 s kept back
    now[0] += 9.0
    assert d.left() == pytest.approx(1.0)
    now[0] += 5.0
    assert d.left() == MIN_STEP_S  # spent: each later step still gets a moment


async def test_steps_past_the_deadline_are_abandoned_and_reported_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = Shutdown(0.2)
    source, sink = _Client(hangs=True), _Client(hangs=False)
    await stop.stop_clients(source, sink, asyncio.sleep(30))  # a teardown that hangs
    assert source.given is not None and source.given <= 0.2 + MIN_STEP_S
    assert stop.abandoned == [
        "leaving the consumer group (the broker did not answer)",
        "the stages' teardown",
    ]
    assert stop.deadline.elapsed() < 5  # the hanging teardown was cut at what was left
    log = logging.getLogger("streamsynth.test.shutdown")
    with caplog.at_level(logging.ERROR, logger=log.name):
        assert stop.report(log)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "shutdown incomplete" in line and "consumer group" in line and "teardown" in line
    assert not Shutdown(1).report(log)  # nothing abandoned: no line
