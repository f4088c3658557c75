"""Administrative reads and writes: create topics, read a group's offsets and lag.

Everything here reads the cluster from outside the consumer group: a consumer
that never subscribes does not join the group, so asking it for the group's
committed offsets triggers no rebalance.

Lag is ``highwater - committed``. The high watermark comes with every fetch
response and is right on every broker we test with; ``end_offsets()``
(ListOffsets latest) is wrong on Tansu (it answers the newest batch's first
offset + 1), and ``list_consumer_group_offsets()`` fails to decode there, so
neither is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from streamsynth.kafka.connection import KafkaConnection

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

#: How long :func:`consumer_lag` waits for the fetch responses that carry the watermarks.
WATERMARK_TIMEOUT_S = 10.0


def _connection(conn: KafkaConnection | str) -> KafkaConnection:
    return conn if isinstance(conn, KafkaConnection) else KafkaConnection(bootstrap_servers=conn)


async def create_topics(
    conn: KafkaConnection | str, topics: Mapping[str, int], *, replication_factor: int = 1
) -> None:
    """Create topics (name -> partitions); existing ones are left as they are."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = _connection(conn).admin()
    await admin.start()
    try:
        for name, partitions in topics.items():
            # One request per topic: a batch fails as a whole when one topic exists.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name, num_partitions=partitions, replication_factor=replication_factor
                        )
                    ]
                )
    finally:
        await admin.close()


def partition_lag(highwater: int | None, committed: int | None) -> int | None:
    """Records not yet committed; None while the high watermark is unknown."""
    if highwater is None:
        return None
    return max(0, highwater - (committed or 0))


async def committed_offsets(
    conn: KafkaConnection | str, group_id: str, topics: Iterable[str]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of every partition of ``topics`` (None: nothing yet)."""
    consumer = _connection(conn).consumer(group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def consumer_lag(
    conn: KafkaConnection | str,
    group_id: str,
    topics: Iterable[str],
    *,
    timeout_s: float = WATERMARK_TIMEOUT_S,
) -> dict[TopicPartition, int]:
    """``highwater - committed`` per partition of ``topics`` for ``group_id``.

    The watermarks come from fetching each partition once at its committed offset
    (with a consumer outside the group, which commits nothing). A partition whose
    watermark did not arrive within ``timeout_s`` is left out.
    """
    committed = await committed_offsets(conn, group_id, topics)
    consumer = _connection(conn).consumer(
        group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=1024
    )
    await consumer.start()
    try:
        consumer.assign(list(committed))
        for tp, offset in committed.items():
            consumer.seek(tp, offset or 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            consumer.highwater(tp) is None for tp in committed
        ):
            await consumer.getmany(timeout_ms=100, max_records=1)
        out = {}
        for tp, offset in committed.items():
            lag = partition_lag(consumer.highwater(tp), offset)
            if lag is not None:
                out[tp] = lag
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    names = list(topics)
    for _ in range(50):  # metadata for a just-created topic can take a moment
        await consumer.topics()
        parts = {name: consumer.partitions_for_topic(name) for name in names}
        if all(parts.values()):
            return [TopicPartition(n, p) for n in names for p in sorted(parts[n] or ())]
        await asyncio.sleep(0.1)
    missing = sorted(n for n, p in parts.items() if not p)
    raise LookupError(f"unknown topic(s): {', '.join(missing)}")
