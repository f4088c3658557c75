"""Interop with a second, independent Kafka client: librdkafka (confluent-kafka).

Production runs against any Kafka; the worker's own tests use aiokafka on both sides,
which could hide a wire-format mistake that only aiokafka tolerates. Here librdkafka
produces the documents (with headers and a bad record) and reads the outputs and the
dead letter back, headers included.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from pathlib import Path
from typing import Any

from kafka_helpers import Topics, WorkerProcess, custom_stage, worker_config

# librdkafka's Python client, from the dev extra: no skip without it.
confluent_kafka = importlib.import_module("confluent_kafka")


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(n):
        value = json.dumps({"id": f"doc-{i}", "text": f"interop document number {i}"})
        headers = [("source", b"librdkafka")]
        producer.produce(topic, value=value.encode(), key=f"k{i}".encode(), headers=headers)
    producer.produce(topic, value=b"\xff\xfe not utf-8", key=b"bad")
    assert producer.flush(30) == 0


def _consume(bootstrap: str, topics: list[str], want: int, timeout_s: float) -> list[Any]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"interop-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got.append(msg)
    finally:
        consumer.close()
    return got


async def test_librdkafka_in_and_out(kafka_bootstrap: str, sim_url: str, tmp_path: Path) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=2)
    n = 50
    await asyncio.to_thread(_produce, kafka_bootstrap, topics.input, n)
    out_topic = topics.outputs["summary"]
    cfg = worker_config(kafka_bootstrap, topics, sim_url, [custom_stage("summary", out_topic)])
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        msgs = await asyncio.to_thread(
            _consume, kafka_bootstrap, [out_topic, topics.dlq], n + 1, 90
        )
    finally:
        worker.stop()
    outputs = [m for m in msgs if m.topic() == out_topic]
    dead = [m for m in msgs if m.topic() == topics.dlq]
    assert sorted(json.loads(m.value())["id"] for m in outputs) == sorted(
        f"doc-{i}" for i in range(n)
    )
    first = json.loads(outputs[0].value())
    assert first["summary"] and first["streamsynth"]["stage"] == "summary"
    assert {m.key() for m in outputs} == {f"k{i}".encode() for i in range(n)}
    assert len(dead) == 1 and dead[0].value() == b"\xff\xfe not utf-8"
    headers = dict(dead[0].headers() or [])
    assert headers["streamsynth.error.topic"] == topics.input.encode()
    assert headers["streamsynth.error.reason"] == b"not_utf8"
    assert headers["streamsynth.error.stage"] == b"decode"
    assert int(headers["streamsynth.error.partition"]) in (0, 1)
    assert int(headers["streamsynth.error.offset"]) >= 0
