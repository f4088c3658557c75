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

from streamsynth.kafka.admin import committed_offsets
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


async def _committed(bootstrap: str, topics: Topics) -> int:
    """Input records the group has committed (the worker's progress)."""
    offsets = await committed_offsets(bootstrap, topics.group, [topics.input])
    return sum(offset or 0 for offset in offsets.values())


async def _until_committed(bootstrap: str, topics: Topics, target: float, timeout_s: float) -> int:
    """Poll the group's committed offsets until they reach ``target``; returns the total."""
    deadline = time.monotonic() + timeout_s
    while True:
        total = await _committed(bootstrap, topics)
        if total >= target:
            return total
        if time.monotonic() > deadline:
            raise AssertionError(f"committed {total} < {target:.0f} after {timeout_s}s")
        await asyncio.sleep(0.1)


async def _finish(
    cfg: dict[str, Any],
    tmp_path: Path,
    name: str,
    topics: Topics,
    n: int,
    *,
    within_s: float,
    exit_s: float,
) -> None:
    """A worker that takes the stream to its end (``n`` committed within ``within_s``),
    then stops on SIGTERM with status 0 within ``exit_s``."""
    worker = WorkerProcess(cfg, tmp_path, name=name).start()
    try:
        await _until_committed(cfg["kafka"]["bootstrap_servers"], topics, n, within_s)
        worker.signal(signal.SIGTERM)
        worker.wait_exit(exit_s, expect=0)
    finally:
        worker.stop()


async def _in_flight(sim: SimulatorProcess, timeout_s: float = 10) -> None:
    """Wait until the simulator has requests in flight (the worker is mid-stream)."""
    await asyncio.to_thread(wait_until, lambda: sim.stats().inflight > 0, timeout_s, "in flight")


async def _read_all(bootstrap: str, topics: Topics, n: int) -> CommittedReader:
    """Everything a fresh read_committed consumer finds in the output and DLQ topics.

    Fresh, from the beginning, once the workers are done: on noida-db 0.2.3 a
    read_committed consumer polling during the kill cycles skipped committed
    records that a fresh one returns (see streamsynth/local/noida.py).
    """
    reader = CommittedReader(bootstrap, _everything(topics))
    async with reader:
        await reader.until(lambda r: len(r.copies) >= n, 60, "all documents")
        await reader.settle(quiet_s=1.0)
    return reader


def _check(reader: CommittedReader, n: int, mode: str) -> int:
    """No document lost; exactly_once: none twice. Returns the duplicate count."""
    copies = reader.copies
    assert set(copies) == {f"doc-{i}" for i in range(n)}, "documents lost"
    duplicates: int = sum(c - 1 for c in copies.values())
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
    # The last kill lands at 84-90 % of the stream. At the simulator's 1-5 ms the rest is
    # about a second of work, which a fast worker could finish before the kill's in-flight
    # check: the last fifth asks for 0.5 s answers (at 256 in flight, ~500 documents/s).
    slow = int(n * 0.8)
    # One in 50 documents is a bad record: the DLQ is inside the transaction too.
    records = [
        (f"doc-{i}".encode(), b'{"id": "doc-%d", "text": 7}' % i)
        if i % 50 == 7
        else doc(i, f"[[sim:latency=0.5]] doc {i}" if i >= slow else None)
        for i in range(n)
    ]
    await produce(txn_bootstrap, topics.input, records)
    cfg = _config(txn_bootstrap, topics, eos_sim, mode)
    t0 = time.monotonic()
    for cycle in range(kills):
        worker = WorkerProcess(cfg, tmp_path, name=f"{mode}-{cycle}").start()
        try:
            # A random point in this worker's share of the stream, then in flight.
            target = (cycle + rng.uniform(0.3, 0.9)) * n / (kills + 1)
            await _until_committed(txn_bootstrap, topics, target, 90)
            await _in_flight(eos_sim)
            worker.kill()
            done = await _committed(txn_bootstrap, topics)
            print(f"kill {cycle}: {done} committed at {time.monotonic() - t0:.1f}s")
            assert done < n, "the kill landed after the stream ended"
        finally:
            worker.stop()
    await _finish(cfg, tmp_path, f"{mode}-final", topics, n, within_s=120, exit_s=20)
    duplicates = _check(await _read_all(txn_bootstrap, topics, n), n, mode)
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
    # 0.1 s per answer at 32 in flight: at most ~320 documents/s, so the stream lasts
    # seconds past the first quarter whatever the machine (at the simulator's 1-5 ms
    # a fast worker could finish before the signal's in-flight check).
    docs = [doc(i, f"[[sim:latency=0.1]] doc {i}") for i in range(n)]
    await produce(txn_bootstrap, topics.input, docs)
    if mode == "exactly_once":
        # An upstream transaction that aborted: an exactly-once worker never processes it.
        await _produce_aborted(txn_bootstrap, topics.input, [doc(i) for i in range(n, n + 20)])
    # A budget the drain meets on a loaded 2-core machine: a drain cut short is a kill.
    cfg = _config(txn_bootstrap, topics, eos_sim, mode, worker__shutdown_timeout_s=15)
    cfg["llm"]["max_concurrency"] = 32
    shutdown_s = cfg["worker"]["shutdown_timeout_s"]
    first = WorkerProcess(cfg, tmp_path, name=f"{mode}-first").start()
    try:
        await _until_committed(txn_bootstrap, topics, n // 4, 60)
        await _in_flight(eos_sim)
        first.signal(signal.SIGTERM)
        started = time.monotonic()
        first.wait_exit(shutdown_s + 10, expect=0)
        took = time.monotonic() - started
        # The drain is bounded by shutdown_timeout_s; process exit adds a little.
        assert took < shutdown_s + 5, f"exit {took:.1f} s after SIGTERM: {first.log_tail()}"
    finally:
        first.stop()
    assert await _committed(txn_bootstrap, topics) < n, "the signal landed after the stream"
    await _finish(cfg, tmp_path, f"{mode}-second", topics, n, within_s=60, exit_s=shutdown_s + 10)
    reader = await _read_all(txn_bootstrap, topics, n)
    assert set(reader.copies) == {f"doc-{i}" for i in range(n)}
    assert all(c == 1 for c in reader.copies.values()), "a graceful stop duplicated records"


# -- fencing ---------------------------------------------------------------------------------
async def _zombie_run(
    mode: str, bootstrap: str, sim: SimulatorProcess, tmp_path: Path
) -> tuple[WorkerProcess, CommittedReader, int]:
    """Worker A frozen (SIGSTOP) mid-stream; B, same group_instance_id (and so the same
    transactional ids), takes its partitions and finishes; A is thawed. Returns A (still
    running or exited), the final read and how many records A had committed."""
    n = 4_000
    topics = Topics.make(["summary"])
    await topics.create(bootstrap)
    await produce(
        bootstrap, topics.input, [doc(i, f"[[sim:latency=0.1]] doc {i}") for i in range(n)]
    )
    cfg = _config(bootstrap, topics, sim, mode)
    cfg["llm"]["max_concurrency"] = 32  # at most ~320 documents/s: A is mid-stream
    a = WorkerProcess(cfg, tmp_path, name="zombie").start()
    b = WorkerProcess(cfg, tmp_path, name="successor")
    try:
        await _until_committed(bootstrap, topics, n // 5, 60)
        await _in_flight(sim)
        a.signal(signal.SIGSTOP)
        at_freeze = await _committed(bootstrap, topics)
        b.start()
        await _until_committed(bootstrap, topics, n, 90)
        a.signal(signal.SIGCONT)
        if mode == "exactly_once":
            a.wait_exit(30, expect=FENCED_EXIT)
        else:
            await asyncio.sleep(3)  # let the thawed zombie publish what it had in flight
            assert a.alive(), "nothing fences an at-least-once zombie: it keeps running"
        b.signal(signal.SIGTERM)
        b.wait_exit(20, expect=0)
    finally:
        if a.alive():
            a.signal(signal.SIGCONT)
        a.stop()
        b.stop()
    return a, await _read_all(bootstrap, topics, n), at_freeze


async def test_a_second_worker_with_the_same_identity_fences_the_first(
    txn_bootstrap: str, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    """The zombie must commit nothing after B took over, say why, and exit."""
    zombie, reader, at_freeze = await _zombie_run("exactly_once", txn_bootstrap, eos_sim, tmp_path)
    assert "fenced: another worker" in zombie.log_text()
    assert at_freeze < 4_000
    _check(reader, 4_000, "exactly_once")


async def test_a_zombie_in_at_least_once_mode_loses_nothing_and_is_not_fenced(
    txn_bootstrap: str, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    """Nothing fences an at-least-once zombie: what it had in flight is published again
    after B redid it (the duplicates exactly-once removes)."""
    _, reader, _ = await _zombie_run("at_least_once", txn_bootstrap, eos_sim, tmp_path)
    duplicates = _check(reader, 4_000, "at_least_once")
    print(f"at_least_once zombie: {duplicates} duplicates")
