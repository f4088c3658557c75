"""Helpers of the exactly-once acceptance tests (on top of tests/kafka/kafka_helpers.py)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kafka"))

from kafka_helpers import TopicReader

from streamsynth.kafka.connection import KafkaConnection


class CommittedReader(TopicReader):
    """A :class:`TopicReader` with ``isolation_level=read_committed``: what consumers see."""

    async def __aenter__(self) -> CommittedReader:
        from aiokafka import TopicPartition

        self._consumer = KafkaConnection(bootstrap_servers=self.bootstrap).consumer(
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await self._consumer.start()
        tps = []
        for topic in self.topics:
            parts = await self._wait_partitions(topic)
            tps.extend(TopicPartition(topic, p) for p in parts)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def poll(self, timeout_ms: int = 200) -> int:
        before = {topic: len(records) for topic, records in self.records.items()}
        n = await super().poll(timeout_ms)
        for topic, records in self.records.items():
            for rec in records[before[topic] :]:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    self.counts[str(rec.json()["id"])] += 1
        return n

    @property
    def counts(self) -> Counter[str]:
        """Copies of each document id across every topic read (kept up to date by poll)."""
        counts: Counter[str] | None = getattr(self, "_counts", None)
        if counts is None:
            counts = self._counts = Counter()
        return counts


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
