"""Interrupted transactions and the bounded exactly-once shutdown, without a broker.

The fake producer runs aiokafka's own transaction state machine
(``TransactionManager``) and answers each broker round trip when the test says so,
or never: what a slow or silent broker looks like to the worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.producer.transaction_manager import TransactionManager

from streamsynth.config import Settings, settings_from_dict
from streamsynth.kafka.exactly_once import (
    UNRESOLVED_EXIT_CODE,
    ExactlyOnceWorker,
    revoke_budget_s,
    round_budget_s,
)
from streamsynth.kafka.inflight import Job
from streamsynth.kafka.partitioner import key_partition
from streamsynth.kafka.shutdown import INCOMPLETE_EXIT_CODE, MIN_STEP_S, Shutdown
from streamsynth.kafka.sink import OutMessage
from streamsynth.kafka.transactions import (
    PartitionFencedError,
    PartitionTxn,
    TransactionalSink,
    TransactionTimedOutError,
    TransactionUnresolvedError,
)
from streamsynth.kafka.worker import _Running

TP = TopicPartition("in", 0)
#: What a bounded step may take beyond its bound on a loaded 2-core machine.
SLACK_S = 2.0


class _Client:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class _Producer:
    """The calls PartitionTxn makes; those named in ``hang`` wait for ``answer``."""

    def __init__(self, *hang: str) -> None:
        self._txn_manager = TransactionManager("in.0", 60_000)
        self._txn_manager.set_pid_and_epoch(1, 0)
        self.hang = set(hang)
        self.answer = asyncio.Event()  # set: the broker answers the hanging calls
        self.waiting = asyncio.Event()  # set: a call waits for the broker
        self.calls: list[str] = []
        self.client = _Client()

    async def _round_trip(self, call: str) -> None:
        self.calls.append(call)
        if call in self.hang:
            self.waiting.set()
            await self.answer.wait()

    async def begin_transaction(self) -> None:
        await self._round_trip("begin")
        self._txn_manager.begin_transaction()

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        await self._round_trip("offsets")

    async def commit_transaction(self) -> None:
        self._txn_manager.committing_transaction()  # as aiokafka: the state moves first
        await self._round_trip("commit")
        self._txn_manager.complete_transaction()

    async def abort_transaction(self) -> None:
        self._txn_manager.aborting_transaction()  # raises in COMMITTING, as aiokafka's does
        await self._round_trip("abort")
        self._txn_manager.complete_transaction()

    async def stop(self) -> None:
        await self._round_trip("stop")


class _Builder:
    def append(self, **message: Any) -> object:
        return message  # truthy: the batch has room

    def close(self) -> None:
        pass


class _BatchProducer(_Producer):
    """Takes batches too: each ``send_batch`` answers with a future the test resolves."""

    PARTITIONS = (0, 1, 2)

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[asyncio.Future[Any]] = []

    def create_batch(self) -> _Builder:
        return _Builder()

    async def partitions_for(self, topic: str) -> set[int]:
        return set(self.PARTITIONS)

    async def send_batch(self, builder: _Builder, topic: str, *, partition: int) -> Any:
        self.sent.append(asyncio.get_running_loop().create_future())
        return self.sent[-1]


def _part(*hang: str) -> tuple[PartitionTxn, _Producer]:
    producer = _Producer(*hang)
    return PartitionTxn(TP, "in.0", producer), producer


async def _cut_off(part: PartitionTxn, producer: _Producer) -> None:
    """Start a commit, cancel it once it waits for the broker; the cancel must land at once."""
    task = asyncio.create_task(part.commit(10, "group"))
    await producer.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, SLACK_S)


async def test_a_commit_cut_off_mid_commit_is_unresolved_not_fenced() -> None:
    # The cancel lands while EndTxn(commit) is in flight: an abort is an invalid state
    # change there (it once raised, read as ProducerFenced: exit 3 after a SIGTERM).
    part, producer = _part("commit")
    await _cut_off(part, producer)
    assert not part.fenced
    assert part.unresolved
    assert "abort" not in producer.calls
    # The broker may still commit it: its messages must never be sent again.
    with pytest.raises(TransactionUnresolvedError):
        await part.commit(10, "group")


async def test_a_cancel_does_not_wait_for_an_abort_the_broker_never_answers() -> None:
    part, producer = _part("offsets", "abort")
    await _cut_off(part, producer)  # would wait forever on the abort
    assert part.unresolved and not part.fenced


async def test_a_transaction_that_completes_leaves_the_partition_resolved() -> None:
    part, producer = _part()
    assert await part.commit(10, "group") == 0  # nothing held: an offset-only transaction
    assert not part.unresolved and part.committed == 10
    assert producer.calls == ["begin", "offsets", "commit"]


def _keys_on_every_partition() -> list[bytes]:
    keys: dict[int, bytes] = {}
    for i in range(1000):
        key = f"k{i}".encode()
        keys.setdefault(key_partition(key, _BatchProducer.PARTITIONS), key)
    assert len(keys) == len(_BatchProducer.PARTITIONS)
    return list(keys.values())


async def test_a_fenced_transaction_leaves_no_failure_unread() -> None:
    # As aiokafka's sender on a fence: the transaction manager's fatal error (which sets
    # its transaction waiter), then every batch fails with the same error. Nothing awaits
    # that waiter once the producer is given up; unread, asyncio logged it at ERROR with a
    # traceback whenever it was collected (asyncio logs a future at collection exactly
    # when its ``_log_traceback`` flag is still set).
    producer = _BatchProducer()
    part = PartitionTxn(TP, "in.0", producer)  # type: ignore[arg-type]
    part.hold(3, [OutMessage("out", b"v", key) for key in _keys_on_every_partition()])
    commit = asyncio.create_task(part.commit(10, "group"))
    for _ in range(10_000):  # the batches are sent without a wait: a few loop turns
        if len(producer.sent) == 3 or commit.done():
            break
        await asyncio.sleep(0)
    assert len(producer.sent) == 3
    fenced = ProducerFenced()
    producer._txn_manager.fatal_error(fenced)
    waiter = producer._txn_manager.wait_for_transaction_end()
    assert waiter.done() and waiter._log_traceback  # unread so far
    for fut in producer.sent:
        fut.set_exception(fenced)
    with pytest.raises(PartitionFencedError):
        await commit
    assert part.fenced
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert not waiter._log_traceback
    assert not any(f._log_traceback for f in producer.sent)  # gather read the batches


async def test_close_gives_up_on_a_producer_that_does_not_stop() -> None:
    part, producer = _part("stop")
    t0 = time.monotonic()
    assert not await part.close(0.1)
    assert time.monotonic() - t0 < 0.1 + SLACK_S
    assert producer.client.closed  # its connections dropped: nothing holds the exit


async def test_close_does_not_wait_past_its_bound_for_a_transaction_in_flight() -> None:
    part, producer = _part("commit")
    commit = asyncio.create_task(part.commit(10, "group"))
    await producer.waiting.wait()  # the commit holds the partition's lock
    assert not await part.close(0.1)
    assert producer.client.closed
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(commit, SLACK_S)


async def test_a_transaction_past_its_bound_is_cut_off_and_left_unresolved() -> None:
    part, producer = _part("commit")  # the broker never answers EndTxn
    t0 = time.monotonic()
    with pytest.raises(TransactionTimedOutError):
        await asyncio.wait_for(part.commit(10, "group", timeout_s=0.1), 0.1 + SLACK_S)
    assert time.monotonic() - t0 < 0.1 + SLACK_S
    assert part.unresolved and not part.fenced and part.committed is None
    assert "abort" not in producer.calls
    with pytest.raises(TransactionUnresolvedError):  # nothing more is committed
        await part.commit(10, "group")


# -- the worker ------------------------------------------------------------------------------
def _settings(worker: dict[str, Any] | None = None, /, **kafka: Any) -> Settings:
    return settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": "127.0.0.1:1",  # never contacted
                "group_id": "group",
                "input_topic": "in",
                "dlq_topic": "dlq",
                "processing_guarantee": "exactly_once",
                **kafka,
            },
            "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
            "stages": [
                {"task": "custom", "prompt": "{document}", "output_field": "o", "output_topic": "o"}
            ],
            "worker": {"commit_interval_s": 0.01, "drain_timeout_s": 0, **(worker or {})},
        }
    )


class _Source:
    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()

    def lag(self, tp: TopicPartition, committed: int | None) -> int | None:
        return None

    def pause(self, tps: Any) -> None:
        self.paused.update(tps)

    async def stop(self, timeout_s: float | None = None) -> bool:
        return True  # left the group


class _Sink:
    async def stop(self, timeout_s: float | None = None) -> bool:
        return True


class _Runner:
    async def teardown(self) -> None:
        pass


def _worker(producer: _Producer, settings: Settings | None = None) -> ExactlyOnceWorker:
    """A worker owning partition TP with record 0 finished (due to commit), no Kafka."""
    settings = settings or _settings()
    worker = ExactlyOnceWorker(settings)
    worker._held = {}
    txn = worker._txn = TransactionalSink(settings)
    txn.parts[TP] = PartitionTxn(TP, "in.0", producer)
    worker.window.assign({TP})
    state = worker.window.parts[TP]
    state.tracker.add(0)
    state.tracker.done(0)
    txn.hold(TP, 0, [])  # its (no) outputs held until its transaction commits
    worker._held[TP] = 1
    worker.window.count = 1  # a held record keeps its slot
    worker._run = _Running(_Source(), _Sink(), _Runner())  # type: ignore[arg-type]
    return worker


async def test_the_final_commit_is_bounded_by_the_shutdown_deadline() -> None:
    producer = _Producer("commit")  # the broker never answers EndTxn
    worker = _worker(producer)
    worker._stop = Shutdown(0.2)
    t0 = time.monotonic()
    assert not await worker.commit()
    assert time.monotonic() - t0 < 0.2 + MIN_STEP_S + SLACK_S
    assert worker._txn is not None and worker._txn.parts[TP].unresolved  # commits nothing more


async def _revoke_unanswered(
    settings: Settings,
) -> tuple[ExactlyOnceWorker, PartitionTxn, _Producer, float]:
    """Revoke TP while the broker never answers EndTxn; returns the worker, TP's
    producer state, the fake producer and how long the revoke took."""
    producer = _Producer("commit")
    worker = _worker(producer, settings)
    assert worker._txn is not None
    part = worker._txn.parts[TP]
    budget_s = revoke_budget_s(settings)
    t0 = time.monotonic()
    await asyncio.wait_for(worker.on_revoked({TP}), budget_s + MIN_STEP_S + SLACK_S)
    return worker, part, producer, time.monotonic() - t0


async def test_a_revoke_cuts_off_its_final_transaction_at_the_rebalance_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The broker stops answering EndTxn during a rebalance: the listener must return
    # (else the group waits for it forever), the partition left unresolved.
    settings = _settings(session_timeout_ms=1_000, max_poll_interval_ms=1_000)
    budget_s = revoke_budget_s(settings)
    assert budget_s == 1.0  # the consumer's rebalance timeout
    worker, part, producer, took = await _revoke_unanswered(settings)
    assert took < budget_s + MIN_STEP_S + SLACK_S
    assert worker._txn is not None
    assert part.unresolved and not part.fenced  # nothing more is committed for it
    assert part.committed is None and "stop" in producer.calls  # closed, not committed
    assert TP not in worker._txn.parts and TP not in worker.window.parts
    assert worker.window.count == 0  # the held record's slot came back
    assert worker.exit_code == 0  # a revoke is no failure: the worker goes on
    cut = [r.getMessage() for r in caplog.records if "was cut off" in r.getMessage()]
    assert cut == [
        "revoke: the last transaction of 1 partitions was cut off, its outcome unknown; "
        "abandoned: 1 held records (redone by the next owner unless the transaction "
        "committed after all)"
    ]


async def test_a_revoke_commits_its_final_transaction_when_the_broker_answers() -> None:
    producer = _Producer()
    worker = _worker(producer, _settings(session_timeout_ms=1_000, max_poll_interval_ms=1_000))
    assert worker._txn is not None
    part = worker._txn.parts[TP]
    await asyncio.wait_for(worker.on_revoked({TP}), SLACK_S)
    assert part.committed == 1 and not part.unresolved
    assert producer.calls == ["begin", "offsets", "commit", "stop"]


async def test_stopping_the_commit_loop_lets_its_round_in_flight_finish() -> None:
    producer = _Producer("commit")
    worker = _worker(producer)
    loop = asyncio.create_task(worker._commit_loop())
    await producer.waiting.wait()  # a round is in commit_transaction
    loop.cancel()  # what Worker.run does when the worker stops
    with pytest.raises(asyncio.CancelledError):
        await loop
    producer.answer.set()
    round_ = worker._round
    assert round_ is not None
    assert await asyncio.wait_for(round_, SLACK_S)  # committed, not cut off
    part = worker._txn.parts[TP] if worker._txn is not None else None
    assert part is not None and not part.unresolved and not part.fenced
    assert part.committed == 1


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
async def test_the_commit_loop_ends_when_cancelled_just_after_a_commit_was_wanted(
    steps: int,
) -> None:
    # asyncio.wait_for (3.11) swallowed a cancel landing once the event it waited for
    # was set: the loop then ran forever and the worker never began its shutdown.
    worker = _worker(_Producer())
    txn = worker._txn
    assert txn is not None
    loop = asyncio.create_task(worker._commit_loop())
    await asyncio.sleep(0)  # the loop waits for the event
    txn.wants_commit.set()  # a record passed the held bound
    for _ in range(steps):  # yields, not a timed wait: where the cancel lands
        await asyncio.sleep(0)
    worker.request_stop()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop, SLACK_S)


async def test_the_commit_loop_stops_by_itself_once_the_worker_stops() -> None:
    worker = _worker(_Producer())
    txn = worker._txn
    assert txn is not None
    worker.request_stop()
    txn.wants_commit.set()
    await asyncio.wait_for(worker._commit_loop(), SLACK_S)  # returns: no round started
    assert worker._round is None


# -- a regular round's bound -------------------------------------------------------------------
#: The smallest transaction timeout the settings allow: the regular round's bound.
ROUND_SETTINGS = {"transaction_timeout_ms": 1_000}
CUT_OFF = (
    "commit round: the broker did not answer the transaction of in[0] within 1 s "
    "(kafka.transaction_timeout_ms); its outcome is unknown, so nothing more is committed "
    "for these partitions; abandoned: 1 held records (redone by the next owner unless the "
    "transaction committed after all); stopping (exit 1): the next owner settles it"
)


def _cut_off_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("commit round")]


async def test_a_regular_round_the_broker_leaves_unanswered_stops_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # EndTxn never answers: the round held the commit lock forever and the worker, its
    # window full of held records, stalled without a word.
    settings = _settings(**ROUND_SETTINGS)
    bound_s = round_budget_s(settings)
    assert bound_s == 1.0  # the transaction timeout
    producer = _Producer("commit")
    worker = _worker(producer, settings)
    assert worker._txn is not None
    part = worker._txn.parts[TP]
    loop = asyncio.create_task(worker._commit_loop())
    t0 = time.monotonic()
    await asyncio.wait_for(worker._stop_event.wait(), bound_s + SLACK_S)  # asks to stop
    assert bound_s - 0.01 <= time.monotonic() - t0 < bound_s + SLACK_S
    await asyncio.wait_for(loop, SLACK_S)  # the loop ends by itself: the worker stops
    assert part.unresolved and not part.fenced  # the next owner settles it
    assert part.committed is None and worker.window.parts[TP].tracker.committed is None
    assert "abort" not in producer.calls
    assert worker.exit_code == UNRESOLVED_EXIT_CODE == INCOMPLETE_EXIT_CODE == 1
    assert not worker._commit_lock.locked()
    assert _cut_off_lines(caplog) == [CUT_OFF]
    assert [r.levelname for r in caplog.records if r.getMessage() == CUT_OFF] == ["ERROR"]
    # Never consuming on it again: paused, and what was fetched already is not started.
    assert TP in worker.running.source.paused  # type: ignore[attr-defined]
    worker._dispatch(TP, [object()])
    assert worker.window.count == 1 and not worker.window.parts[TP].jobs


async def test_records_fetched_while_a_transaction_runs_are_started() -> None:
    # A transaction in flight is not one cut off. Taking one for the other dropped every
    # batch fetched during a commit round: those offsets were never tracked, so the
    # partition's committed prefix stopped there and the worker stalled (bench eos).
    producer = _Producer("commit")
    worker = _worker(producer)
    assert worker._txn is not None
    started: list[Job] = []
    worker._start_job = started.append  # type: ignore[method-assign,assignment]
    round_in_flight = asyncio.create_task(worker.commit())
    await asyncio.wait_for(producer.waiting.wait(), SLACK_S)
    assert worker._txn.parts[TP].unresolved and not worker._txn.is_unresolved(TP)
    msg = ConsumerRecord(TP.topic, TP.partition, 1, 0, 0, b"k", b"v", None, 1, 1, [])
    worker._dispatch(TP, [msg])
    assert [job.msg.offset for job in started] == [1]
    producer.answer.set()
    assert await asyncio.wait_for(round_in_flight, SLACK_S)
    assert not worker._txn.is_unresolved(TP) and not worker._stopping


async def test_the_shutdown_after_a_round_cut_off_ends_within_its_own_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings({"shutdown_timeout_s": 1.0}, **ROUND_SETTINGS)
    producer = _Producer("commit")  # still silent
    worker = _worker(producer, settings)
    assert worker._txn is not None
    part = worker._txn.parts[TP]
    assert not await asyncio.wait_for(worker.commit(), round_budget_s(settings) + SLACK_S)
    await asyncio.wait_for(worker._shutdown(), 1.0 + MIN_STEP_S + SLACK_S)
    assert producer.calls.count("commit") == 1  # the final commit left it alone
    assert "stop" in producer.calls and TP not in worker._txn.parts
    assert part.committed is None and not part.held  # dropped: redone by the next owner
    assert worker.window.count == 0
    assert worker.exit_code == UNRESOLVED_EXIT_CODE
    assert not any("shutdown incomplete" in r.getMessage() for r in caplog.records)
    assert [r.getMessage() for r in caplog.records if "was cut off" in r.getMessage()] == [
        "shutdown: the last transaction of 1 partitions was cut off, its outcome unknown; "
        "abandoned: 1 held records (redone by the next owner unless the transaction "
        "committed after all)"
    ]


async def test_a_regular_round_the_broker_answers_is_not_cut_off() -> None:
    producer = _Producer()
    worker = _worker(producer, _settings(**ROUND_SETTINGS))
    assert worker._txn is not None
    part = worker._txn.parts[TP]
    assert await asyncio.wait_for(worker.commit(), SLACK_S)
    assert producer.calls == ["begin", "offsets", "commit"]
    assert part.committed == 1 and not part.unresolved
    assert worker.window.count == 0  # the committed record's slot came back
    assert not worker._stopping and worker.exit_code == 0


async def test_a_revoke_keeps_its_own_bound_not_the_rounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The revoke (2 s) outlasts the round's bound (1 s): its final transaction is cut
    # off at the revoke's bound, and the worker goes on as before.
    settings = _settings(**ROUND_SETTINGS, session_timeout_ms=2_000, max_poll_interval_ms=2_000)
    budget_s = revoke_budget_s(settings)
    assert budget_s == 2.0 > round_budget_s(settings)
    worker, part, _, took = await _revoke_unanswered(settings)
    assert budget_s - 0.01 <= took
    assert part.unresolved and not part.fenced
    assert not worker._stopping and worker.exit_code == 0
    assert _cut_off_lines(caplog) == []
