"""The input side: an AIOKafkaConsumer in a consumer group, with manual commits.

Auto-commit is off: the worker commits only the contiguous finished prefix of
each partition (see :mod:`streamsynth.kafka.offsets`). Rebalance callbacks are
delegated to the worker, which drains and commits revoked partitions before the
group moves them.

Lag is ``highwater - committed`` (see :mod:`streamsynth.kafka.admin` for why not
``end_offsets``). The client is built by :mod:`streamsynth.kafka.connection`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from streamsynth.config import Settings
from streamsynth.kafka.admin import partition_lag
from streamsynth.kafka.connection import KafkaConnection

log = logging.getLogger("streamsynth.kafka.source")


class RebalanceHandler(Protocol):
    async def on_revoked(self, partitions: set[TopicPartition]) -> None: ...

    async def on_assigned(self, partitions: set[TopicPartition]) -> None: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, handler: RebalanceHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._handler.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._handler.on_assigned(set(assigned))


def consumer_options(settings: Settings) -> dict[str, Any]:
    """The worker's consumer settings (the connection part comes from KafkaConnection)."""
    kafka = settings.kafka
    # The revoke callback drains in-flight records; the group must wait that long for us
    # (Kafka's own clients default the rebalance timeout to max.poll.interval.ms).
    drain_ms = int(settings.worker.drain_timeout_s * 1000) + 5_000
    rebalance_ms = min(kafka.max_poll_interval_ms, max(kafka.session_timeout_ms, drain_ms))
    # One record may be as large as the size limit (larger ones are dead-lettered unread,
    # but must still be fetchable).
    partition_fetch = max(1_048_576, settings.record.max_record_bytes + 65_536)
    return {
        "group_id": kafka.group_id,
        "group_instance_id": kafka.group_instance_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "rebalance_timeout_ms": rebalance_ms,
        "fetch_max_bytes": kafka.fetch_max_bytes,
        "max_partition_fetch_bytes": min(kafka.fetch_max_bytes, partition_fetch),
    }


def consumer_kwargs(settings: Settings) -> dict[str, Any]:
    """Everything the worker's consumer is constructed with."""
    return KafkaConnection.from_settings(settings.kafka).consumer_kwargs(
        **consumer_options(settings)
    )


class Source:
    """The consumer, subscribed to the input topics with the worker as rebalance handler."""

    def __init__(self, settings: Settings, handler: RebalanceHandler) -> None:
        self.topics = list(settings.kafka.input_topics)
        connection = KafkaConnection.from_settings(settings.kafka)
        self.consumer = connection.consumer(**consumer_options(settings))
        self._listener = _Listener(handler)

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=self._listener)

    async def stop(self) -> None:
        # Leaves the group (unless static membership), so the partitions move at once.
        await self.consumer.stop()

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        result: dict[
            TopicPartition, list[ConsumerRecord[bytes, bytes]]
        ] = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return result

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        parts = list(partitions)
        if parts:
            self.consumer.pause(*parts)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        parts = list(partitions)
        if parts:
            self.consumer.resume(*parts)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.consumer.commit(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        value: int | None = await self.consumer.committed(tp)
        return value

    def lag(self, tp: TopicPartition, committed: int | None) -> int | None:
        """High watermark minus the committed offset (None until a fetch saw the partition)."""
        return partition_lag(self.consumer.highwater(tp), committed)
