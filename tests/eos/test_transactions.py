"""TransactionalSink against a real transactional broker (noida-db), no worker.

What exactly-once rests on: held messages past the finished prefix never reach a
``read_committed`` reader; a commit makes outputs and the offset visible together;
a second owner of a partition fences the first, whose later commits fail; a close
drops what is held and leaves nothing half-committed; a broker without
transactions is refused at start-up with one error naming the setting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import TopicPartition

from streamsynth.config import ConfigError, Settings, settings_from_dict
from streamsynth.kafka.admin import committed_offsets, create_topics
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.kafka.sink import OutMessage
from streamsynth.kafka.source import consumer_options
from streamsynth.kafka.transactions import (
    TransactionalSink,
    TransactionsUnsupportedError,
    check_settings,
    transactional_id,
)
from streamsynth.local.broker import EmbeddedBroker


def _settings(bootstrap: str, group: str, **kafka: Any) -> Settings:
    return settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": group,
                "input_topic": "in",
                "dlq_topic": "dlq",
                "processing_guarantee": "exactly_once",
                "linger_ms": 1,
                **kafka,
            },
            "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
            "stages": [
                {"task": "custom", "prompt": "{document}", "output_field": "o", "output_topic": "o"}
            ],
        }
    )


async def _read_committed(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 10
) -> list[Any]:
    """Every committed value of ``topic`` (read_committed), polled until ``expect`` or timeout."""
    consumer = KafkaConnection(bootstrap_servers=bootstrap).consumer(
        isolation_level="read_committed", enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        quiet_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            got = [m.value for msgs in batch.values() for m in msgs]
            values.extend(got)
            if len(values) >= expect:
                # Keep reading briefly: a duplicate would arrive right behind.
                quiet_until = quiet_until or time.monotonic() + 0.5
                if time.monotonic() > quiet_until:
                    break
        return values
    finally:
        await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no partitions for {topic}")


def _msg(topic: str, i: int) -> OutMessage:
    return OutMessage(topic, f"out-{i}".encode(), f"k{i}".encode())


@pytest.fixture
def names() -> dict[str, str]:
    base = uuid.uuid4().hex[:8]
    return {"in": f"in-{base}", "out": f"out-{base}", "group": f"g-{base}"}


async def test_only_the_finished_prefix_is_committed_with_its_offset(
    txn_bootstrap: str, names: dict[str, str]
) -> None:
    await create_topics(txn_bootstrap, {names["in"]: 1, names["out"]: 3})
    settings = _settings(txn_bootstrap, names["group"])
    tp = TopicPartition(names["in"], 0)
    sink = TransactionalSink(settings)
    await sink.open([tp])
    try:
        # Records 0..9 finished except 4: the prefix ends at 4.
        for i in [9, 0, 1, 2, 3, 5, 6, 7, 8]:
            sink.hold(tp, i, [_msg(names["out"], i)])
        report = await sink.commit({tp: 4})
        assert report.committed == {tp: 4} and not report.fenced and not report.failed
        assert sink.held_records == 5
        values = await _read_committed(txn_bootstrap, names["out"], expect=4)
        assert sorted(values) == [f"out-{i}".encode() for i in range(4)]
        committed = await committed_offsets(txn_bootstrap, names["group"], [names["in"]])
        assert committed[tp] == 4

        # Record 4 finishes (with no output at all): everything goes in the next transaction.
        sink.hold(tp, 4, [])
        report = await sink.commit({tp: 10})
        assert report.committed == {tp: 6}
        values = await _read_committed(txn_bootstrap, names["out"], expect=9)
        assert sorted(values) == sorted(f"out-{i}".encode() for i in range(10) if i != 4)
        committed = await committed_offsets(txn_bootstrap, names["group"], [names["in"]])
        assert committed[tp] == 10
        # Nothing new: no transaction, nothing committed.
        assert (await sink.commit({tp: 10})).committed == {tp: 0}
    finally:
        await sink.stop()


async def test_a_second_owner_fences_the_first_which_commits_nothing(
    txn_bootstrap: str, names: dict[str, str]
) -> None:
    await create_topics(txn_bootstrap, {names["in"]: 2, names["out"]: 1})
    settings = _settings(txn_bootstrap, names["group"])
    tp0, tp1 = TopicPartition(names["in"], 0), TopicPartition(names["in"], 1)
    old = TransactionalSink(settings)
    await old.open([tp0, tp1])
    new = TransactionalSink(settings)
    try:
        old.hold(tp0, 0, [_msg(names["out"], 0)])
        assert (await old.commit({tp0: 1})).committed == {tp0: 1}
        old.hold(tp0, 1, [_msg(names["out"], 1)])
        old.hold(tp1, 0, [_msg(names["out"], 100)])
        # The partition moves: the new owner's init_transactions bumps tp0's epoch only.
        await new.open([tp0])
        report = await old.commit({tp0: 2, tp1: 1})
        assert report.fenced == [tp0]
        assert report.committed == {tp1: 1}  # tp1 is still the old owner's: unaffected
        assert old.is_fenced(tp0) and old.parts[tp0].held == {}
        # Fenced for good: later rounds commit nothing for it.
        old.hold(tp0, 2, [_msg(names["out"], 2)])
        assert (await old.commit({tp0: 3})).fenced == [tp0]
        # The new owner redoes record 1 from the committed offset, exactly once.
        new.hold(tp0, 1, [_msg(names["out"], 1)])
        assert (await new.commit({tp0: 2})).committed == {tp0: 1}
        values = await _read_committed(txn_bootstrap, names["out"], expect=3)
        assert sorted(values) == [b"out-0", b"out-1", b"out-100"]
        committed = await committed_offsets(txn_bootstrap, names["group"], [names["in"]])
        assert committed == {tp0: 2, tp1: 1}
    finally:
        await old.stop()
        await new.stop()


async def test_close_drops_held_records_and_an_abandoned_transaction_stays_invisible(
    txn_bootstrap: str, names: dict[str, str]
) -> None:
    await create_topics(txn_bootstrap, {names["in"]: 1, names["out"]: 1})
    settings = _settings(txn_bootstrap, names["group"])
    tp = TopicPartition(names["in"], 0)
    sink = TransactionalSink(settings)
    await sink.open([tp])
    part = sink.parts[tp]
    # A transaction left open with data in it (as a kill -9 mid-commit leaves it).
    await part.producer.begin_transaction()
    await part.producer.send_and_wait(names["out"], b"half", key=b"h")
    sink.hold(tp, 0, [_msg(names["out"], 0)])
    assert await sink.close([tp]) == (1, True)
    assert tp not in sink.parts and sink.held_records == 0
    # The next owner starts cleanly and commits; the aborted data never shows.
    nxt = TransactionalSink(settings)
    await nxt.open([tp])
    try:
        nxt.hold(tp, 0, [_msg(names["out"], 0)])
        assert (await nxt.commit({tp: 1})).committed == {tp: 1}
        assert await _read_committed(txn_bootstrap, names["out"], expect=1) == [b"out-0"]
    finally:
        await nxt.stop()


async def test_held_bytes_or_records_past_their_bound_ask_for_an_early_commit(
    txn_bootstrap: str, names: dict[str, str]
) -> None:
    await create_topics(txn_bootstrap, {names["in"]: 1, names["out"]: 1})
    settings = _settings(txn_bootstrap, names["group"], transaction_max_bytes=65_536)
    tp = TopicPartition(names["in"], 0)
    sink = TransactionalSink(settings, max_held_records=1_000)
    await sink.open([tp])
    try:
        big = OutMessage(names["out"], b"x" * 40_000, b"k")
        sink.hold(tp, 0, [big])
        assert not sink.wants_commit.is_set()
        sink.hold(tp, 1, [big])
        assert sink.wants_commit.is_set()
        await sink.commit({tp: 2})
        assert not sink.wants_commit.is_set() and sink.held_bytes == 0
    finally:
        await sink.stop()


async def test_a_broker_without_transactions_is_refused_with_one_clear_error() -> None:
    with EmbeddedBroker() as tansu:  # Tansu rejects InitProducerId
        settings = _settings(tansu.bootstrap_servers, "g")
        with pytest.raises(TransactionsUnsupportedError) as info:
            await TransactionalSink(settings).probe()
    message = str(info.value)
    assert message.startswith("kafka.processing_guarantee: exactly_once needs a broker")
    assert isinstance(info.value, ConfigError)


def test_settings_checks_name_the_field() -> None:
    settings = _settings("127.0.0.1:1", "g", transaction_timeout_ms=1_000)
    settings.worker.commit_interval_s = 2.0
    with pytest.raises(ConfigError, match=r"^kafka\.transaction_timeout_ms"):
        check_settings(settings)
    assert _settings("127.0.0.1:1", "g").kafka.processing_guarantee == "exactly_once"
    with pytest.raises(ConfigError, match="processing_guarantee"):
        _settings("127.0.0.1:1", "g", processing_guarantee="exactly-once")


def test_an_exactly_once_worker_reads_its_input_read_committed() -> None:
    assert consumer_options(_settings("127.0.0.1:1", "g"))["isolation_level"] == "read_committed"
    alo = _settings("127.0.0.1:1", "g", processing_guarantee="at_least_once")
    assert consumer_options(alo)["isolation_level"] == "read_uncommitted"


def test_transactional_ids_are_per_input_partition() -> None:
    assert transactional_id("grp", TopicPartition("docs", 3)) == "grp.docs.3"
    settings = _settings("127.0.0.1:1", "g", transactional_id_prefix="pipe-a")
    assert TransactionalSink(settings).prefix == "pipe-a"
    assert TransactionalSink(_settings("127.0.0.1:1", "grp")).prefix == "grp"
