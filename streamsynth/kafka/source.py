"""The input side: an AIOKafkaConsumer in a consumer group, with manual commits.

Auto-commit is off: the worker commits only the contiguous finished prefix of
each partition (see :mod:`streamsynth.kafka.offsets`). Rebalance callbacks are
delegated to the worker, which drains and commits revoked partitions before the
group moves them.

Lag is ``highwater - committed`` (see :mod:`streamsynth.kafka.admin` for why not
``end_offsets``). The client is built by :mod:`streamsynth.kafka.connection`.

Every call that waits on the broker takes a timeout: in an outage aiokafka's
commit waits for a coordinator forever, and a shutdown must end regardless.

Commits carry metadata (the finished offsets past the committed one, see
:mod:`streamsynth.kafka.offsets`). aiokafka's ``committed()`` returns only the
offset, so :meth:`Source.committed_with_metadata` asks the group coordinator
(``OffsetFetch``) directly. What the brokers keep (checked 2026-12-01, aiokafka
0.14): noida-db stores and returns the metadata (it does not enforce the 4 KiB
default limit); Tansu 0.6 accepts it and returns an empty string, so on Tansu the
next owner falls back to the plain prefix. (The admin client's
``list_consumer_group_offsets`` fails to decode Tansu's answer; on noida-db it
returns the metadata too.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

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
        # exactly_once: never process a record of an aborted or still open transaction
        # (an upstream exactly-once worker's outputs used as this worker's input).
        "isolation_level": (
            "read_committed" if kafka.processing_guarantee == "exactly_once" else "read_uncommitted"
        ),
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

    async def stop(self, timeout_s: float | None = None) -> bool:
        """Leave the group (unless static membership), so the partitions move at once.

        False when that did not finish within ``timeout_s`` (the broker is down):
        the connections are then dropped without a goodbye and the group notices
        after the session timeout.
        """
        try:
            await asyncio.wait_for(self.consumer.stop(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(TimeoutError, KafkaError, OSError):
                await asyncio.wait_for(self.consumer._client.close(), 1.0)
            return False
        return True

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

    async def commit(
        self,
        offsets: Mapping[TopicPartition, int],
        metadata: Mapping[TopicPartition, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        """Commit ``offsets`` (with per-partition ``metadata``); TimeoutError past ``timeout_s``."""
        meta = metadata or {}
        await asyncio.wait_for(
            self.consumer.commit(
                {tp: OffsetAndMetadata(off, meta.get(tp, "")) for tp, off in offsets.items()}
            ),
            timeout_s,
        )

    async def committed(self, tp: TopicPartition) -> int | None:
        value: int | None = await self.consumer.committed(tp)
        return value

    async def committed_with_metadata(
        self, tps: Iterable[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, tuple[int, str]]:
        """The group's committed (offset, metadata) of ``tps``; partitions never committed are
        left out. Raises TimeoutError or KafkaError when the coordinator does not answer.
        """
        wanted = list(tps)
        if not wanted:
            return {}
        # aiokafka's public committed() drops the metadata; its coordinator keeps it.
        found = await asyncio.wait_for(
            self.consumer._coordinator.fetch_committed_offsets(wanted), timeout_s
        )
        return {
            tp: (om.offset, om.metadata or "")
            for tp, om in found.items()
            if om is not None and om.offset >= 0
        }

    async def broker_reachable(self, timeout_s: float) -> bool:
        """Whether some broker answers a metadata request within ``timeout_s``."""
        try:
            await asyncio.wait_for(self.consumer._client.fetch_all_metadata(), timeout_s)
        except (TimeoutError, KafkaError, OSError):
            return False
        return True

    def lag(self, tp: TopicPartition, committed: int | None) -> int | None:
        """High watermark minus the committed offset (None until a fetch saw the partition)."""
        return partition_lag(self.consumer.highwater(tp), committed)
