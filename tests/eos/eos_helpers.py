"""Helpers of the exactly-once acceptance tests (on top of streamsynth.testing.harness)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import orjson

from streamsynth.testing.harness import TopicReader


class CommittedReader(TopicReader):
    """A :class:`TopicReader` with ``isolation_level=read_committed``: what consumers see.

    ``copies`` counts every document id across the topics read, kept up to date by
    :meth:`poll` (cheap enough to check after every fetch of a 20k-record run).
    """

    def __init__(self, target: Any, topics: list[str]) -> None:
        super().__init__(target, topics, isolation_level="read_committed")
        self.copies: Counter[str] = Counter()

    async def poll(self, timeout_ms: int = 200) -> int:
        before = {topic: len(records) for topic, records in self.records.items()}
        n = await super().poll(timeout_ms)
        for topic, records in self.records.items():
            for rec in records[before[topic] :]:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    self.copies[str(rec.json()["id"])] += 1
        return n

    def positions(self) -> dict[str, tuple[int | None, int | None, int | None]]:
        """Per partition: (position, last stable offset, high watermark), for a stall report."""
        consumer = self._consumer
        assert consumer is not None
        out = {}
        for tp in consumer.assignment():
            position = consumer._subscription.subscription.assignment.state_value(tp).position
            out[f"{tp.topic}[{tp.partition}]"] = (
                position,
                consumer.last_stable_offset(tp),
                consumer.highwater(tp),
            )
        return out

    async def until(self, done: Any, timeout_s: float, what: str = "") -> None:
        try:
            await super().until(done, timeout_s, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; (position, LSO, highwater): {self.positions()}") from None


def wait_until(check: Any, timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """Poll ``check()`` until truthy (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
