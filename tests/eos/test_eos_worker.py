"""Exactly-once acceptance: the worker as a process on noida-db, read back read_committed.

Each scenario runs in both modes. ``exactly_once``: every document appears exactly
once across the output and DLQ topics, whatever kills the worker. ``at_least_once``
on the same broker: nothing is lost, and kill -9 shows the duplicates that
exactly-once removes.

One worker per consumer group at a time, with static membership
(``group_instance_id``): noida-db cannot complete an aiokafka rebalance between two
live members (see streamsynth/local/noida.py), and static membership lets a
restarted worker take its partitions back at once.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from eos_helpers import CommittedReader, wait_until

from streamsynth.kafka.connection import KafkaConnection
from streamsynth.local.llm_simulator import SimulatorProcess
from streamsynth.testing.harness import (
    Topics,
    WorkerProcess,
    custom_stage,
    doc,
    produce,
    worker_config,
)

pytestmark = pytest.mark.integration

MODES = ["exactly_once", "at_least_once"]
FENCED_EXIT = 3


def _config(
    bootstrap: str, topics: Topics, sim: SimulatorProcess, mode: str, **overrides: Any
) -> dict[str, Any]:
    cfg = worker_config(
        bootstrap,
        topics,
        sim.base_url,
        [custom_stage("summary", topics.outputs["summary"])],
        kafka__processing_guarantee=mode,
        kafka__group_instance_id="eos-worker-0",
        worker__max_batch_records=1000,
        worker__max_inflight_records=1000,
        worker__commit_interval_s=0.2,
        **overrides,
    )
    cfg["llm"]["max_concurrency"] = 256
    return cfg


def _everything(topics: Topics) -> list[str]:
    return [topics.outputs["summary"], topics.dlq]


def _seen(reader: CommittedReader, topics: Topics) -> int:
    return len(reader.copies)


async def _poll_until(reader: CommittedReader, done: Any, timeout_s: float, what: str) -> None:
    await reader.until(lambda r: done(), timeout_s, what)


async def _in_flight(sim: SimulatorProcess, timeout_s: float = 10) -> None:
    """Wait until the simulator has requests in flight (the worker is mid-stream)."""
    await asyncio.to_thread(wait_until, lambda: sim.stats().inflight > 0, timeout_s, "in flight")


def _check(reader: CommittedReader, topics: Topics, n: int, mode: str) -> int:
    """No document lost; exactly_once: none twice. Returns the duplicate count."""
    copies = reader.copies
    assert set(copies) == {f"doc-{i}" for i in range(n)}, "documents lost"
    duplicates = sum(c - 1 for c in copies.values())
    if mode == "exactly_once":
        assert duplicates == 0, f"{duplicates} duplicates"
    return duplicates


# -- kill -9 ---------------------------------------------------------------------------------
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES)
async def test_kill_9_ten_times_over_20000_documents(
    mode: str, txn_bootstrap: str, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    n, kills = 20_000, 10
    rng = random.Random(14)
    topics = Topics.make(["summary"])
    await topics.create(txn_bootstrap)
    # One in 50 documents is a bad record: the DLQ is inside the transaction too.
    records = [
        (f"doc-{i}".encode(), b'{"id": "doc-%d", "text": 7}' % i) if i % 50 == 7 else doc(i)
        for i in range(n)
    ]
    await produce(txn_bootstrap, topics.input, records)
    cfg = _config(txn_bootstrap, topics, eos_sim, mode)
    t0 = time.monotonic()
    async with CommittedReader(txn_bootstrap, _everything(topics)) as reader:
        for cycle in range(kills):
            worker = WorkerProcess(cfg, tmp_path, name=f"{mode}-{cycle}").start()
            try:
                # A random point in this worker's share of the stream, then in flight.
                target = (cycle + rng.uniform(0.3, 0.9)) * n / (kills + 1)
                await _poll_until(reader, lambda t=target: len(reader.copies) >= t, 90, "go")
                await _in_flight(eos_sim)
                worker.kill()
                print(
                    f"kill {cycle} at {len(reader.copies)} documents, {time.monotonic() - t0:.1f}s"
                )
            finally:
                worker.stop()
        final = WorkerProcess(cfg, tmp_path, name=f"{mode}-final").start()
        try:
            await _poll_until(reader, lambda: _seen(reader, topics) >= n, 120, "all documents")
            final.signal(signal.SIGTERM)
            assert final.wait(20) == 0
        finally:
            final.stop()
        await reader.settle(quiet_s=1.0)
    duplicates = _check(reader, topics, n, mode)
    if mode == "at_least_once":
        # What exactly-once removes: records published but not committed at a kill.
        assert duplicates > 0
    print(f"{mode}: {kills} kills over {n} documents, {duplicates} duplicates")


async def _produce_aborted(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaConnection(bootstrap_servers=bootstrap).producer(
        transactional_id=f"upstream-{topic}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
        await producer.abort_transaction()
    finally:
        await producer.stop()


# -- SIGTERM ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_sigterm_mid_stream_loses_and_duplicates_nothing(
    mode: str, txn_bootstrap: str, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    n = 3_000
    topics = Topics.make(["summary"])
    await topics.create(txn_bootstrap)
    await produce(txn_bootstrap, topics.input, [doc(i) for i in range(n)])
    if mode == "exactly_once":
        # An upstream transaction that aborted: an exactly-once worker never processes it.
        await _produce_aborted(txn_bootstrap, topics.input, [doc(i) for i in range(n, n + 20)])
    cfg = _config(txn_bootstrap, topics, eos_sim, mode)
    shutdown_s = cfg["worker"]["shutdown_timeout_s"]
    async with CommittedReader(txn_bootstrap, _everything(topics)) as reader:
        first = WorkerProcess(cfg, tmp_path, name=f"{mode}-first").start()
        try:
            await _poll_until(reader, lambda: _seen(reader, topics) >= n // 4, 60, "progress")
            await _in_flight(eos_sim)
            first.signal(signal.SIGTERM)
            started = time.monotonic()
            assert first.wait(shutdown_s + 10) == 0
            # The drain is bounded by shutdown_timeout_s; process exit adds a little.
            assert time.monotonic() - started < shutdown_s + 5
        finally:
            first.stop()
        assert _seen(reader, topics) < n, "the signal landed after the stream ended"
        second = WorkerProcess(cfg, tmp_path, name=f"{mode}-second").start()
        try:
            await _poll_until(reader, lambda: _seen(reader, topics) >= n, 60, "all documents")
            second.signal(signal.SIGTERM)
            assert second.wait(shutdown_s + 10) == 0
        finally:
            second.stop()
        await reader.settle(quiet_s=1.0)
    copies = reader.copies
    assert set(copies) == {f"doc-{i}" for i in range(n)}
    assert all(c == 1 for c in copies.values()), "a graceful stop duplicated records"


# -- fencing ---------------------------------------------------------------------------------
async def test_a_second_worker_with_the_same_identity_fences_the_first(
    txn_bootstrap: str, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    """A zombie: worker A is frozen (SIGSTOP) mid-stream; B, same group_instance_id and
    transactional ids, takes its partitions (fencing A's producers) and finishes the
    stream. A is thawed: it must commit nothing, say why, and exit."""
    n = 4_000
    topics = Topics.make(["summary"])
    await topics.create(txn_bootstrap)
    await produce(
        txn_bootstrap, topics.input, [doc(i, f"[[sim:latency=0.1]] doc {i}") for i in range(n)]
    )
    cfg = _config(txn_bootstrap, topics, eos_sim, "exactly_once")
    cfg["llm"]["max_concurrency"] = 32  # at most ~320 documents/s: A is mid-stream
    async with CommittedReader(txn_bootstrap, _everything(topics)) as reader:
        a = WorkerProcess(cfg, tmp_path, name="zombie").start()
        b = WorkerProcess(cfg, tmp_path, name="successor")
        try:
            await _poll_until(reader, lambda: _seen(reader, topics) >= n // 5, 60, "progress")
            await _in_flight(eos_sim)
            a.signal(signal.SIGSTOP)
            at_freeze = _seen(reader, topics)
            b.start()
            await _poll_until(reader, lambda: _seen(reader, topics) >= n, 90, "all documents")
            a.signal(signal.SIGCONT)
            assert a.wait(30) == FENCED_EXIT, a.log_text()[-2000:]
            assert "fenced: another worker" in a.log_text()
            await reader.settle(quiet_s=1.0)
            b.signal(signal.SIGTERM)
            assert b.wait(20) == 0
        finally:
            if a.alive():
                a.signal(signal.SIGCONT)
            a.stop()
            b.stop()
        await reader.settle(quiet_s=1.0)
    assert at_freeze < n
    _check(reader, topics, n, "exactly_once")


async def test_a_zombie_in_at_least_once_mode_loses_nothing_and_is_not_fenced(
    txn_bootstrap: str, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    """The same zombie in at_least_once mode: nothing fences it, so what it had in flight
    is published again after B redid it (the duplicates exactly-once removes)."""
    n = 4_000
    topics = Topics.make(["summary"])
    await topics.create(txn_bootstrap)
    await produce(
        txn_bootstrap, topics.input, [doc(i, f"[[sim:latency=0.1]] doc {i}") for i in range(n)]
    )
    cfg = _config(txn_bootstrap, topics, eos_sim, "at_least_once")
    cfg["llm"]["max_concurrency"] = 32  # at most ~320 documents/s: A is mid-stream
    async with CommittedReader(txn_bootstrap, _everything(topics)) as reader:
        a = WorkerProcess(cfg, tmp_path, name="zombie").start()
        b = WorkerProcess(cfg, tmp_path, name="successor")
        try:
            await _poll_until(reader, lambda: len(reader.copies) >= n // 5, 60, "progress")
            await _in_flight(eos_sim)
            a.signal(signal.SIGSTOP)
            b.start()
            await _poll_until(reader, lambda: len(reader.copies) >= n, 90, "all documents")
            a.signal(signal.SIGCONT)
            await reader.settle(quiet_s=2.0)
            assert a.alive(), "nothing fences an at-least-once zombie: it keeps running"
        finally:
            if a.alive():
                a.signal(signal.SIGCONT)
            a.stop()
            b.stop()
        await reader.settle(quiet_s=1.0)
    duplicates = _check(reader, topics, n, "at_least_once")
    print(f"at_least_once zombie: {duplicates} duplicates")
