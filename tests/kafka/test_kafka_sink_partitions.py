"""The sink partitions keyed outputs as Kafka's default partitioner does, hashing once."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from kafka_helpers import TopicReader, Topics

from streamsynth.config import settings_from_dict
from streamsynth.kafka.partitioner import key_partition, keyless_partition, murmur2
from streamsynth.kafka.sink import OutMessage, Sink

#: Kafka's own vectors (clients' UtilsTest.testMurmur2), as signed 32-bit Java ints.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(h: int) -> int:
    return (h ^ 0x80000000) - 0x80000000


def test_murmur2_matches_kafkas_vectors() -> None:
    assert {k: _signed(murmur2(k)) for k in KAFKA_VECTORS} == KAFKA_VECTORS


def test_murmur2_equals_aiokafkas_for_every_length_and_tail() -> None:
    for length in range(70):  # every tail (0-3 bytes) over 0-17 whole words
        for _ in range(50):
            key = os.urandom(length)
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_key_partition_picks_as_the_default_partitioner() -> None:
    default = DefaultPartitioner()
    for count in (1, 2, 3, 5, 12):
        partitions = list(range(count))
        for _ in range(200):
            key = os.urandom(16)
            assert key_partition(key, partitions) == default(key, partitions, partitions)


def test_a_keyless_message_goes_to_an_available_partition_else_to_any() -> None:
    partitions = [0, 1, 2, 3, 4]
    picked = {keyless_partition(partitions, [1, 3]) for _ in range(200)}
    assert picked == {1, 3}  # 200 draws of two: both are seen
    assert {keyless_partition(partitions, []) for _ in range(500)} == set(partitions)


@pytest.mark.integration
async def test_keyed_messages_land_on_the_default_partitioners_partition(
    kafka_bootstrap: str,
) -> None:
    topics = Topics.make(["s"])
    await topics.create(kafka_bootstrap, partitions=5)
    topic = topics.outputs["s"]
    settings = settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "group_id": topics.group,
                "input_topic": topics.input,
                "dlq_topic": topics.dlq,
                "linger_ms": 1,
            },
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "stages": [{"task": "custom", "name": "s", "prompt": "{document}",
                        "output_field": "s", "output_topic": topic}],
        }
    )  # fmt: skip
    sink = Sink(settings)
    await sink.start()
    keys = [f"doc-{i}".encode() for i in range(200)]
    acked: list[BaseException | None] = []
    done = asyncio.Event()

    def on_ack(exc: BaseException | None) -> None:
        acked.append(exc)
        if len(acked) == len(keys):
            done.set()

    try:
        # Metadata first, so every message takes the batch path (the one that partitions).
        assert await sink.producer.partitions_for(topic) == set(range(5))
        for key in keys:
            sink.submit(OutMessage(topic, b"{}", key), on_ack)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await sink.stop(10)
    assert acked == [None] * len(keys)
    async with TopicReader(kafka_bootstrap, [topic], validate_outputs=False) as reader:
        await reader.until(lambda r: r.counts[topic] >= len(keys), 30, "the outputs")
    where = {r.key: r.partition for r in reader.records[topic]}
    expected = {k: DefaultPartitioner()(k, list(range(5)), list(range(5))) for k in keys}
    assert where == expected
    assert len(set(where.values())) == 5
