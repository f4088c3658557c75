"""Topic creation, a group's committed offsets and lag, read from outside the group."""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition

from streamsynth.kafka.admin import (
    committed_offsets,
    consumer_lag,
    create_topics,
    partition_lag,
)
from streamsynth.kafka.connection import KafkaConnection


def test_partition_lag_is_highwater_minus_committed() -> None:
    assert partition_lag(None, 5) is None  # no fetch response yet: unknown, not zero
    assert partition_lag(10, None) == 10
    assert partition_lag(10, 4) == 6
    assert partition_lag(3, 7) == 0  # a stale watermark never makes lag negative


async def test_offsets_and_lag_of_a_group(kafka_bootstrap: str) -> None:
    conn = KafkaConnection(bootstrap_servers=kafka_bootstrap)
    topic, group = f"admin-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await create_topics(conn, {topic: 2})
    await create_topics(conn, {topic: 2})  # existing: left as it is, no error
    producer = conn.producer()
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, b"x", partition=i % 2)
    finally:
        await producer.stop()

    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert await committed_offsets(conn, group, [topic]) == {p0: None, p1: None}
    committer = conn.consumer(group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign([p0])  # manual assignment: commits without joining the group
        await committer.commit({p0: 2})
    finally:
        await committer.stop()

    assert await committed_offsets(conn, group, [topic]) == {p0: 2, p1: None}
    assert await consumer_lag(conn, group, [topic]) == {p0: 3, p1: 5}
