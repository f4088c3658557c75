"""Exactly-once delivery: a record's outputs and its offset commit in one Kafka transaction.

``kafka.processing_guarantee: exactly_once`` replaces the at-least-once sink. A
finished record's messages (outputs, dead letter, filtered copy) are not sent at
once: they are *held* with the record's offset. A commit round then, for each
input partition, takes the contiguous finished prefix that the offset tracker
reports and, in one transaction, sends the prefix's held messages, adds the
prefix's end offset to the transaction (``send_offsets_to_transaction``) and
commits. A ``read_committed`` consumer therefore sees a record's outputs exactly
when the group's committed offset passes the record, whatever kills the worker
and when: an unfinished transaction is aborted by the next owner's
``init_transactions``, and the records it covered are redone from the committed
offset. Messages of finished records behind an unfinished one stay held until the
prefix reaches them; they are never sent in a transaction whose offsets do not
cover them (that would duplicate them after a crash).

Memory. A held record still counts in the worker's in-flight window until its
transaction commits, so held messages are bounded by ``max_inflight_records``
times a record's outputs. A round starts before ``commit_interval_s`` when the
held bytes pass ``transaction_max_bytes`` or the held records pass half the
window (so a full window never waits for the timer).

Transactional ids: one per *input partition*, ``{prefix}.{topic}.{partition}``
(prefix: ``transactional_id_prefix``, default the group id), each with its own
producer. aiokafka's ``send_offsets_to_transaction`` carries no group generation
(no KIP-447), so a per-worker id could not stop a zombie (a paused or partitioned
old owner) from committing offsets of a partition that has moved. With an id per
partition the new owner's ``init_transactions`` bumps the epoch for exactly the
partitions it takes over: the zombie's open transaction is aborted and its next
one fails with ``ProducerFenced``. faust uses the same scheme for the same reason.
The cost is one producer (one connection) per assigned input partition.

Fencing. ``ProducerFenced`` (or any fatal producer error) marks the partition
fenced: its held messages are dropped, nothing more is committed for it, and the
commit round reports it so the worker stops and exits with a clear log line
(another worker owns the partition; restarting rejoins the group afresh).

Revoke and shutdown: the worker drains, commits the final prefix in one last
transaction, then :meth:`TransactionalSink.close` drops what is still held and
aborts any open transaction. Each transaction commits whole or not at all. Both
are bounded (a shutdown by ``shutdown_timeout_s``, a revoke by the group's rebalance
timeout); a final transaction cut off by that bound is interrupted (below).

Interrupted transactions. aiokafka waits for the broker's answers without a bound,
so the worker bounds a shutdown's transactions by its deadline and cancels what
runs past it, and each transaction of a regular commit round by
``kafka.transaction_timeout_ms`` (``timeout_s`` of :meth:`TransactionalSink.commit`;
past it the broker aborts the transaction on its own unless our EndTxn reached it,
so waiting longer cannot help): one cut off there is reported in
:attr:`CommitReport.unresolved` and the worker stops (see
:mod:`~streamsynth.kafka.exactly_once`). A transaction cancelled before its commit
or abort returned has an unknown outcome (the broker may still commit it), so its
producer is left *unresolved*: it commits nothing more, and its held messages are
dropped at close (the next owner's ``init_transactions`` settles the transaction
either way; a committed one moved the offset with the messages, an aborted one is
redone). A cancelled transaction is not aborted on the spot: waiting for the abort
is what the cancel was meant to stop, and ``abort_transaction`` while the commit is
in flight is an invalid state change in aiokafka (an AssertionError, which was once
taken here for a fence: a SIGTERM during a commit made the worker exit 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from streamsynth.config import Settings
from streamsynth.errors import ConfigError, StreamsynthError
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.kafka.partitioner import key_partition, keyless_partition
from streamsynth.kafka.sink import MAX_BATCH_BYTES, OutMessage

log = logging.getLogger("streamsynth.kafka.transactions")

#: Errors after which the producer can never commit again (its epoch is stale).
FATAL_ERRORS: tuple[type[BaseException], ...] = (
    ProducerFenced,
    OutOfOrderSequenceNumber,
    TransactionalIdAuthorizationFailed,
)
#: How long the start-up probe waits for the broker's InitProducerId answer.
PROBE_TIMEOUT_S = 15.0
#: How long closing the producers may take when no deadline is given (a shutdown and
#: a revoke pass what is left of theirs): a healthy broker answers an abort in ms.
CLOSE_TIMEOUT_S = 5.0
#: How long dropping the connections of a producer that did not stop in time may take.
DROP_TIMEOUT_S = 1.0


class TransactionsUnsupportedError(ConfigError):
    """``exactly_once`` was asked for, but the broker refuses transactions."""

    error_type = "transactions_unsupported"


def transactional_id(prefix: str, tp: TopicPartition) -> str:
    """The transactional id of input partition ``tp``: stable across restarts and owners."""
    return f"{prefix}.{tp.topic}.{tp.partition}"


def id_prefix(settings: Settings) -> str:
    return settings.kafka.transactional_id_prefix or settings.kafka.group_id


def check_settings(settings: Settings) -> None:
    """Settings that exactly-once needs; raise :class:`ConfigError` naming the field."""
    kafka = settings.kafka
    if kafka.processing_guarantee != "exactly_once":
        return
    interval_ms = settings.worker.commit_interval_s * 1000
    if kafka.transaction_timeout_ms <= interval_ms:
        raise ConfigError(
            "kafka.transaction_timeout_ms: must exceed worker.commit_interval_s "
            f"({kafka.transaction_timeout_ms} ms <= {interval_ms:.0f} ms)"
        )


def producer_options(settings: Settings, txn_id: str) -> dict[str, Any]:
    """Options of one partition's transactional producer (idempotent, acks=all)."""
    kafka = settings.kafka
    return {
        "transactional_id": txn_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": kafka.linger_ms,
        "compression_type": kafka.compression_type,
        "max_batch_size": MAX_BATCH_BYTES,
        "max_request_size": max(kafka.fetch_max_bytes, settings.record.max_record_bytes * 2),
        "transaction_timeout_ms": kafka.transaction_timeout_ms,
    }


async def probe_transactions(settings: Settings, connection: KafkaConnection) -> None:
    """Fail at start-up, with one clear error, when the broker has no transactions.

    Starts a producer with a probe transactional id (InitProducerId) and stops it.
    """
    txn_id = f"{id_prefix(settings)}.probe"
    producer = connection.producer(**producer_options(settings, txn_id))
    try:
        await asyncio.wait_for(producer.start(), PROBE_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError, AssertionError) as exc:
        raise TransactionsUnsupportedError(
            "kafka.processing_guarantee: exactly_once needs a broker with transactions; "
            f"{settings.kafka.bootstrap_servers} refused a transactional producer "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


@dataclass(slots=True)
class _Held:
    messages: list[OutMessage]
    size: int


@dataclass(slots=True)
class CommitReport:
    """What a commit round did: records committed, partitions fenced or failed, and
    partitions whose transaction this round cut off at its bound (``unresolved``)."""

    committed: dict[TopicPartition, int] = field(default_factory=dict)
    fenced: list[TopicPartition] = field(default_factory=list)
    failed: list[TopicPartition] = field(default_factory=list)
    unresolved: list[TopicPartition] = field(default_factory=list)


class PartitionFencedError(StreamsynthError, RuntimeError):
    """Another producer with this partition's transactional id took over."""

    error_type = "producer_fenced"


class TransactionUnresolvedError(StreamsynthError, RuntimeError):
    """The partition's last transaction was interrupted: its outcome is unknown."""

    error_type = "transaction_unresolved"


class TransactionTimedOutError(TransactionUnresolvedError):
    """The broker did not answer a transaction within its bound: it was cut off there,
    its outcome unknown (the partition is unresolved from then on)."""

    error_type = "transaction_timed_out"


class PartitionTxn:
    """One input partition's transactional producer and the messages held for it."""

    def __init__(self, tp: TopicPartition, txn_id: str, producer: AIOKafkaProducer) -> None:
        self.tp = tp
        self.transactional_id = txn_id
        self.producer = producer
        self.held: dict[int, _Held] = {}
        self.held_bytes = 0
        self.fenced = False
        #: Set while a transaction runs, and left set when one was interrupted before its
        #: commit or abort returned (see the module doc): then, with the lock free again,
        #: this producer commits nothing more (:attr:`cut_off`).
        self.unresolved = False
        self.committed: int | None = None
        self.lock = asyncio.Lock()
        self._partitions: dict[str, list[int]] = {}

    @property
    def cut_off(self) -> bool:
        """A transaction was interrupted, its outcome unknown. Not merely one in flight:
        ``unresolved`` is set during every transaction, which runs under the lock."""
        return self.unresolved and not self.lock.locked()

    def hold(self, offset: int, messages: list[OutMessage]) -> int:
        """Keep a finished record's messages until its prefix commits; returns their bytes."""
        size = sum(len(m.value or b"") + len(m.key or b"") for m in messages)
        self.held[offset] = _Held(messages, size)
        self.held_bytes += size
        return size

    async def commit(self, position: int, group_id: str, timeout_s: float | None = None) -> int:
        """Send the held messages below ``position`` and commit them with that offset.

        Returns how many records the transaction covered (0: nothing to do). Raises
        :class:`PartitionFencedError` once fenced, :class:`TransactionUnresolvedError`
        after an interrupted transaction, :class:`TransactionTimedOutError` when this
        transaction ran past ``timeout_s`` and was cut off (None: no bound of its own),
        ``KafkaError`` when the transaction was aborted (the messages stay held for the
        next round).
        """
        async with self.lock:
            if self.fenced:
                raise PartitionFencedError(self.transactional_id)
            if self.unresolved:
                # Its messages may be committed already: sending them again could
                # duplicate them.
                raise TransactionUnresolvedError(self.transactional_id)
            ready = sorted(offset for offset in self.held if offset < position)
            if not ready and self.committed is not None and position <= self.committed:
                return 0
            bound = asyncio.timeout(timeout_s)
            try:
                async with bound:
                    await self._transaction(ready, position, group_id)
            except FATAL_ERRORS as exc:
                self._fence(exc)
                raise PartitionFencedError(self.transactional_id) from exc
            except TimeoutError as exc:
                if not bound.expired():
                    raise  # not our bound (the transaction was aborted): a plain failure
                # The cancel left it unresolved (see _transaction): nothing more commits.
                raise TransactionTimedOutError(self.transactional_id) from exc
            for offset in ready:
                self.held_bytes -= self.held.pop(offset).size
            self.committed = position
            return len(ready)

    async def _transaction(self, ready: list[int], position: int, group_id: str) -> None:
        producer = self.producer
        # Set until the commit or the abort returns: a cancel anywhere in between
        # leaves it set (see the module doc).
        self.unresolved = True
        await producer.begin_transaction()
        try:
            futures = await self._send(ready)
            if futures:
                await asyncio.gather(*futures)
            await producer.send_offsets_to_transaction({self.tp: position}, group_id)
            await producer.commit_transaction()
        except FATAL_ERRORS:
            raise
        except Exception:
            await self._abort()
            self.unresolved = False
            raise
        self.unresolved = False

    async def _abort(self) -> None:
        """Abort the open transaction; a producer that cannot abort is fenced for good."""
        txn = self.producer._txn_manager
        if txn is None or txn.is_fatal_error():
            raise ProducerFenced()
        try:
            await self.producer.abort_transaction()
        except FATAL_ERRORS:
            raise
        except Exception as exc:
            raise ProducerFenced() from exc

    async def _send(self, ready: list[int]) -> list[asyncio.Future[Any]]:
        """Pack the ready messages, in input order, into one batch per output partition."""
        producer = self.producer
        builders: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for offset in ready:
            for msg in self.held[offset].messages:
                partition = await self._partition_for(msg)
                key = (msg.topic, partition)
                builder = builders.get(key)
                if builder is None:
                    builder = builders[key] = producer.create_batch()
                headers = msg.headers or []
                if builder.append(key=msg.key, value=msg.value, timestamp=None, headers=headers):
                    continue
                builder.close()  # full: send it and start another
                futures.append(await producer.send_batch(builder, msg.topic, partition=partition))
                builder = builders[key] = producer.create_batch()
                builder.append(key=msg.key, value=msg.value, timestamp=None, headers=headers)
        for (topic, partition), builder in builders.items():  # each holds >= 1 message
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    async def _partition_for(self, msg: OutMessage) -> int:
        """Kafka's default (murmur2) partition, as the at-least-once sink computes it."""
        partitions = self._partitions.get(msg.topic)
        if partitions is None:
            found = await self.producer.partitions_for(msg.topic)
            partitions = self._partitions[msg.topic] = sorted(found)
        if msg.key is None:
            return keyless_partition(partitions, partitions)
        return key_partition(msg.key, partitions)

    def _fence(self, exc: BaseException) -> None:
        self.fenced = True
        txn = self.producer._txn_manager
        if txn is not None:
            # aiokafka sets the fatal error on its transaction waiter too, which nothing
            # awaits once the producer is given up: unread, asyncio logs it at ERROR with
            # a traceback when it is collected, beside the line below that says it all.
            txn.wait_for_transaction_end().add_done_callback(_read_outcome)
        dropped = len(self.held)
        self.held.clear()
        self.held_bytes = 0
        log.error(
            "producer fenced: another worker owns this partition now; its held records "
            "are dropped and nothing more is committed for it",
            extra={
                "partition": f"{self.tp.topic}[{self.tp.partition}]",
                "transactional_id": self.transactional_id,
                "dropped_records": dropped,
                "error": type(exc).__name__,
            },
        )

    def drop(self) -> int:
        """Forget every held message (the next owner redoes those records)."""
        dropped = len(self.held)
        self.held.clear()
        self.held_bytes = 0
        return dropped

    async def close(self, timeout_s: float) -> bool:
        """Abort an open transaction (if any) and stop the producer, within ``timeout_s``.

        False when that did not finish in time (a transaction still running holds the
        lock, or the broker does not answer): the producer's connections are then
        dropped, and the transaction is settled by the next owner's
        ``init_transactions`` (or the broker's transaction timeout).
        """
        try:
            await asyncio.wait_for(self._close(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.client.close(), DROP_TIMEOUT_S)
            # Abandoned, never to be used again. Unmarked, aiokafka's finalizer reported it
            # at exit as an "Unclosed AIOKafkaProducer" ERROR, next to the lines that say
            # why it was abandoned; its stop() (which would mark it) waits on the silence.
            self.producer._closed = True
            return False
        return True

    async def _close(self) -> None:
        async with self.lock:
            txn = self.producer._txn_manager
            if txn is not None and txn.is_in_transaction():
                with contextlib.suppress(Exception):
                    await self.producer.abort_transaction()
            with contextlib.suppress(Exception):
                await self.producer.stop()


def _read_outcome(fut: asyncio.Future[Any]) -> None:
    """Mark a future's failure as seen (the caller reports it another way)."""
    if not fut.cancelled():
        fut.exception()


class TransactionalSink:
    """The transactional producers of the assigned input partitions. See the module doc."""

    def __init__(
        self,
        settings: Settings,
        *,
        connection: KafkaConnection | None = None,
        max_held_records: int | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = settings.kafka.group_id
        self.prefix = id_prefix(settings)
        self.connection = connection or KafkaConnection.from_settings(settings.kafka)
        self.max_held_bytes = settings.kafka.transaction_max_bytes
        self.max_held_records = max_held_records or max(
            1, settings.worker.max_inflight_records // 2
        )
        self.parts: dict[TopicPartition, PartitionTxn] = {}
        self.held_bytes = 0
        self.held_records = 0
        #: Set when held messages pass a bound: the commit loop should not wait.
        self.wants_commit = asyncio.Event()

    async def probe(self) -> None:
        """See :func:`probe_transactions`."""
        await probe_transactions(self.settings, self.connection)

    async def open(self, tps: Iterable[TopicPartition]) -> None:
        """Start a producer per partition; ``init_transactions`` fences the previous owner.

        Must complete before the partitions' committed offsets are read: it resolves
        (aborts) any transaction the previous owner left open.
        """
        fresh = [tp for tp in tps if tp not in self.parts]
        started = await asyncio.gather(*(self._start(tp) for tp in fresh))
        for part in started:
            self.parts[part.tp] = part

    async def _start(self, tp: TopicPartition) -> PartitionTxn:
        txn_id = transactional_id(self.prefix, tp)
        producer = self.connection.producer(**producer_options(self.settings, txn_id))
        await producer.start()
        return PartitionTxn(tp, txn_id, producer)

    def hold(self, tp: TopicPartition, offset: int, messages: list[OutMessage]) -> None:
        """Hold a finished record's messages (an empty list: a record with no output)."""
        part = self.parts[tp]
        if part.fenced:
            return
        self.held_bytes += part.hold(offset, messages)
        self.held_records += 1
        if self.held_bytes >= self.max_held_bytes or self.held_records >= self.max_held_records:
            self.wants_commit.set()

    async def commit(
        self, positions: dict[TopicPartition, int], timeout_s: float | None = None
    ) -> CommitReport:
        """One transaction per partition in ``positions`` (its finished prefix), concurrently,
        each cut off past ``timeout_s`` (then reported ``unresolved``; None: unbounded)."""
        report = CommitReport()
        chosen = [(self.parts[tp], pos) for tp, pos in positions.items() if tp in self.parts]
        results = await asyncio.gather(
            *(part.commit(pos, self.group_id, timeout_s) for part, pos in chosen),
            return_exceptions=True,
        )
        for (part, _), result in zip(chosen, results, strict=True):
            if isinstance(result, PartitionFencedError):
                report.fenced.append(part.tp)
            elif isinstance(result, TransactionTimedOutError):
                report.unresolved.append(part.tp)
            elif isinstance(result, TransactionUnresolvedError):
                report.failed.append(part.tp)  # its records are redone by the next owner
            elif isinstance(result, BaseException):
                report.failed.append(part.tp)
                log.warning(
                    "transaction aborted; its records stay held for the next round",
                    extra={"transactional_id": part.transactional_id, "error": repr(result)},
                )
            else:
                report.committed[part.tp] = result
        self._recount()
        return report

    def _recount(self) -> None:
        self.held_bytes = sum(p.held_bytes for p in self.parts.values())
        self.held_records = sum(len(p.held) for p in self.parts.values())
        if self.held_bytes < self.max_held_bytes and self.held_records < self.max_held_records:
            self.wants_commit.clear()

    def is_fenced(self, tp: TopicPartition) -> bool:
        part = self.parts.get(tp)
        return part is not None and part.fenced

    def is_unresolved(self, tp: TopicPartition) -> bool:
        """Whether ``tp``'s last transaction was cut off (never true while one runs)."""
        part = self.parts.get(tp)
        return part is not None and part.cut_off

    async def close(
        self, tps: Iterable[TopicPartition], timeout_s: float = CLOSE_TIMEOUT_S
    ) -> tuple[int, bool]:
        """Drop what is still held for ``tps``, abort their open transactions, stop them,
        all within ``timeout_s``.

        Returns the number of held records dropped (redone by the next owner) and
        whether every producer stopped in time (see :meth:`PartitionTxn.close`).
        """
        parts = [self.parts.pop(tp) for tp in list(tps) if tp in self.parts]
        dropped = sum(part.drop() for part in parts)
        stopped = await asyncio.gather(*(part.close(timeout_s) for part in parts))
        self._recount()
        return dropped, all(stopped)

    async def stop(self, timeout_s: float = CLOSE_TIMEOUT_S) -> tuple[int, bool]:
        return await self.close(list(self.parts), timeout_s)
