"""The worker in ``exactly_once`` mode: the same flow, a transactional sink.

What changes against the at-least-once :class:`~streamsynth.kafka.worker.Worker`
(see :mod:`streamsynth.kafka.transactions` for the protocol):

- a finished record's messages are *held* (not sent) and its offset marked done;
  the record keeps its slot in the in-flight window until its transaction commits,
  so held messages are bounded by ``max_inflight_records``;
- a commit round runs one transaction per partition with the finished prefix's
  messages and offset; it starts on ``commit_interval_s`` or at once when held
  messages pass their bound;
- on assignment the partition's producer is started first (``init_transactions``
  fences the previous owner and resolves its open transaction), then the
  consumer re-reads the committed offset, so records are fetched from what the
  last committed transaction says;
- on revoke and shutdown the drained prefix is committed in a final transaction,
  then what is still held is dropped and any open transaction aborted; at shutdown
  each of these steps is bounded by what is left of ``shutdown_timeout_s``, and the
  commit round in flight when the worker stops is finished (within that), not cut
  off mid-transaction (see "Interrupted transactions" in
  :mod:`~streamsynth.kafka.transactions`);
- a revoke as a whole (drain, final transaction, closing the producers) is bounded
  by the group's rebalance timeout (:func:`revoke_budget_s`): past it the group
  hands the partitions out without us, and a broker that stops answering must not
  hold the rebalance listener forever. A final transaction cut off there is left
  unresolved, as at shutdown: it commits nothing more, its held records are dropped
  and the next owner redoes what it does not find committed;
- a regular commit round (the commit loop's) is bounded too: each of its
  transactions by the transaction timeout (:func:`round_budget_s`), after which the
  broker aborts the transaction itself (unless our EndTxn reached it), so waiting
  longer cannot help, and a healthy broker needs milliseconds of it. A broker that
  stops answering mid-round would otherwise hold the commit lock forever, the window
  full of held records: the worker stalled without a word. A transaction cut off
  there is unresolved as at shutdown; the worker logs an ERROR naming its partitions,
  what was abandoned and the bound, fetches nothing more for them, and stops with
  :data:`UNRESOLVED_EXIT_CODE` (the shutdown under its own deadline), so that the
  orchestrator restarts it and the next owner's ``init_transactions`` settles the
  transaction;
- ``ProducerFenced``: the worker logs it, commits nothing more for the partition,
  stops and exits with :data:`FENCED_EXIT_CODE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from streamsynth.config import Settings
from streamsynth.kafka.inflight import Job, PartitionState
from streamsynth.kafka.routing import Publication
from streamsynth.kafka.shutdown import INCOMPLETE_EXIT_CODE, Deadline
from streamsynth.kafka.source import consumer_options
from streamsynth.kafka.transactions import (
    CLOSE_TIMEOUT_S,
    CommitReport,
    TransactionalSink,
    check_settings,
)
from streamsynth.kafka.worker import Worker

log = logging.getLogger("streamsynth.kafka.exactly_once")

#: Exit status after ``ProducerFenced``: another worker owns our partitions.
FENCED_EXIT_CODE = 3
#: Exit status after a regular round's transaction was cut off at :func:`round_budget_s`.
#: The shutdown's "incomplete" status, not a code of its own: the cause is the same (the
#: broker did not answer in time, a step was abandoned, nothing unfinished committed)
#: and so is the cure (a restart; the next owner settles and redoes).
UNRESOLVED_EXIT_CODE = INCOMPLETE_EXIT_CODE
#: Pause between commit rounds woken early (a bound passed), so a round never spins.
MIN_ROUND_GAP_S = 0.01


def revoke_budget_s(settings: Settings) -> float:
    """How long a revoke may take in all: the consumer's rebalance timeout.

    That is the drain timeout plus a few seconds for the final transaction (see
    :func:`~streamsynth.kafka.source.consumer_options`); a member still in its
    revoke listener past it is dropped from the group, which then assigns the
    partitions to a worker whose ``init_transactions`` fences ours anyway.
    """
    return float(consumer_options(settings)["rebalance_timeout_ms"]) / 1000


def round_budget_s(settings: Settings) -> float:
    """How long a transaction of a regular commit round may wait for the broker:
    ``kafka.transaction_timeout_ms``.

    Past it the broker's coordinator aborts the transaction itself (unless the EndTxn
    reached it, when it commits), so an answer is no longer worth waiting for; and it
    is what the operator allows a transaction, far more than a healthy broker needs.
    """
    return settings.kafka.transaction_timeout_ms / 1000


class ExactlyOnceWorker(Worker):
    """A :class:`Worker` whose outputs and offset commits are Kafka transactions."""

    _txn: TransactionalSink | None = None
    #: Finished records per partition whose transaction has not committed yet.
    _held: dict[TopicPartition, int]
    #: The commit loop's round in progress (kept: the loop's cancel does not stop it).
    _round: asyncio.Task[bool] | None = None
    #: The revoke in progress: its deadline (None outside a revoke).
    _revoke: Deadline | None = None

    async def _start(self) -> None:
        check_settings(self.settings)
        self._held = {}
        self._txn = TransactionalSink(self.settings)
        await self._txn.probe()  # a broker without transactions: one clear error, now
        await super()._start()
        log.info("exactly-once delivery", extra={"transactional_id_prefix": self._txn.prefix})

    def _dispatch(self, tp: TopicPartition, msgs: list[ConsumerRecord[bytes, bytes]]) -> None:
        txn = self._txn
        if txn is not None and txn.is_unresolved(tp):
            return  # fetched before its pause took hold: its next owner fetches it again
        super()._dispatch(tp, msgs)

    # -- a finished record: hold, do not send ------------------------------------------
    def _publish(self, job: Job, pubs: list[Publication]) -> None:
        part = job.part
        if job.finished or part.closed:
            return
        txn = self._txn
        assert txn is not None
        tp = part.tp
        # Skipped: a fenced partition commits nothing; a record fetched from a position read
        # before the last owner's transaction resolved was already committed by that owner.
        committed = part.tracker.committed
        skip = (
            txn.is_fenced(tp)
            or tp not in txn.parts
            or (committed is not None and job.msg.offset < committed)
        )
        if not skip:
            txn.hold(tp, job.msg.offset, [pub.out for pub in pubs])
            self._held[tp] = self._held.get(tp, 0) + 1
            self._count(pubs)
        job.finished = True
        part.jobs.discard(job)
        part.tracker.done(job.msg.offset)
        if not part.jobs:
            part.idle.set()
        if skip:
            self._release_slots(1)

    def _count(self, pubs: list[Publication]) -> None:
        for pub in pubs:
            if pub.kind == "output":
                self.running.by_name[pub.stage].produced.inc()
            elif pub.kind == "dlq":
                self.metrics.records_dlq.labels(pub.stage, pub.reason).inc()

    def _release_slots(self, n: int) -> None:
        """Give back window slots of records whose transaction committed (or was dropped)."""
        self.window.release(n)

    # -- commit rounds -------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        interval = self.settings.worker.commit_interval_s
        txn = self._txn
        assert txn is not None
        while True:
            # Not asyncio.wait_for: on Python 3.11 it returns, swallowing the cancel, when
            # the event was set just before the worker cancelled this loop on stopping;
            # the loop then ran rounds forever and the shutdown never began.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await txn.wants_commit.wait()
            if self._stopping:
                return  # the shutdown's final commit takes over
            # Shielded: the worker cancels this loop when it stops, and a round cut off
            # mid-transaction has an unknown outcome, so its partitions could commit
            # nothing more. The final commit waits for the round (the commit lock),
            # within the shutdown deadline.
            self._round = asyncio.ensure_future(self.commit())
            await asyncio.shield(self._round)
            await asyncio.sleep(MIN_ROUND_GAP_S)

    async def commit(self, parts: Sequence[PartitionState] | None = None) -> bool:
        """One transaction per partition: its finished prefix's messages and offset.

        While stopping, bounded by what is left of the shutdown (waiting for the
        round in flight included), and a revoke's final commit by what is left of
        the revoke; False when it timed out. A transaction cut off then leaves its
        partition unresolved (nothing more is committed for it). A regular round's
        transactions are each bounded by :func:`round_budget_s`; one cut off there
        stops the worker (:meth:`_on_unresolved`).
        """
        deadline, which = self._commit_deadline(parts)
        # A regular round bounds each transaction itself (cut off: unresolved, stop).
        bound_s = round_budget_s(self.settings) if deadline is None else None
        try:
            async with asyncio.timeout(None if deadline is None else deadline.left()):
                async with self._commit_lock:
                    return await self._commit_round(parts, bound_s)
        except TimeoutError:
            self.metrics.offset_commits.labels("failed").inc()
            log.warning(f"transactions timed out ({which} deadline)")
            return False

    def _commit_deadline(
        self, parts: Sequence[PartitionState] | None
    ) -> tuple[Deadline | None, str]:
        """What bounds a commit: the shutdown, or the revoke for the revoke's own final
        commit (the only call naming its partitions). A loop round started during a
        revoke is not cut off by it: it may cover partitions that stay ours."""
        if self._stop is not None:
            return self._stop.deadline, "shutdown"
        if parts is not None and self._revoke is not None:
            return self._revoke, "revoke"
        return None, ""

    async def _commit_round(
        self, parts: Sequence[PartitionState] | None, bound_s: float | None
    ) -> bool:
        txn = self._txn
        assert txn is not None
        chosen = list(self.window.parts.values()) if parts is None else list(parts)
        positions = {}
        for part in chosen:
            position = part.tracker.committable()
            # An unresolved partition commits nothing more (its close logs what it drops).
            if not part.closed and position is not None and not txn.is_unresolved(part.tp):
                positions[part.tp] = position
        report = await txn.commit(positions, bound_s) if positions else CommitReport()
        by_tp = {part.tp: part for part in chosen}
        for tp, n in report.committed.items():
            by_tp[tp].committed(positions[tp])
            self._held[tp] = self._held.get(tp, 0) - n
            self._release_slots(n)
        if report.committed:
            self.metrics.offset_commits.labels("ok").inc()
        if report.failed or report.unresolved:
            self.metrics.offset_commits.labels("failed").inc()
        if report.unresolved:
            self._on_unresolved(report.unresolved)
        for tp in report.fenced:
            self._on_fenced(tp)
        self._update_gauges(self.running.source, chosen)
        return not report.failed and not report.fenced and not report.unresolved

    def _on_unresolved(self, tps: list[TopicPartition]) -> None:
        """A regular round's transaction of ``tps`` got no answer within its bound: its
        outcome is unknown, so they commit nothing more, fetch nothing more, and the
        worker stops; the next owner's ``init_transactions`` settles the transaction."""
        txn = self._txn
        assert txn is not None
        bound_s = round_budget_s(self.settings)
        held = sum(len(txn.parts[tp].held) for tp in tps if tp in txn.parts)
        names = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
        code = self.exit_code or UNRESOLVED_EXIT_CODE  # a fence (3) says more: it stays
        log.error(
            f"commit round: the broker did not answer the transaction of {', '.join(names)} "
            f"within {bound_s:g} s (kafka.transaction_timeout_ms); its outcome is unknown, "
            "so nothing more is committed for these partitions; abandoned: "
            f"{held} held records (redone by the next owner unless the transaction "
            f"committed after all); stopping (exit {code}): the next owner settles it",
            extra={
                "partitions": names,
                "held_records": held,
                "bound_s": bound_s,
                "exit_code": code,
            },
        )
        self.exit_code = code
        self.request_stop()
        # _dispatch drops what is fetched anyway; a partition revoked meanwhile is no
        # longer the consumer's to pause (IllegalStateError), and nothing may stop the stop.
        with contextlib.suppress(KafkaError):
            self.running.source.pause(tps)

    def _on_fenced(self, tp: TopicPartition) -> None:
        """Another worker took this partition over: stop its work, commit nothing, exit."""
        self._release_slots(self._held.pop(tp, 0))
        if self.exit_code != FENCED_EXIT_CODE:
            log.error(
                "fenced: another worker with the same transactional id owns partition "
                f"{tp.topic}[{tp.partition}]; committing nothing more and exiting",
                extra={"partition": f"{tp.topic}[{tp.partition}]", "exit_code": FENCED_EXIT_CODE},
            )
        self.exit_code = FENCED_EXIT_CODE
        self.request_stop()

    # -- rebalance -----------------------------------------------------------------------
    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        if self._stopping:
            # Stopping (fenced, or a signal): opening producers now would fence the
            # worker that legitimately owns these partitions.
            return
        source = self.running.source
        # Nothing of these partitions may be processed before their producer is open: a
        # record finished earlier could not be held, and its offset would still commit.
        source.pause(partitions)
        await super().on_assigned(partitions)
        txn = self._txn
        assert txn is not None
        try:
            await txn.open(partitions)
            # init_transactions resolved the last owner's open transaction: only now is
            # the committed offset final, so fetch from it (not from a stale read).
            if partitions:
                found = await source.consumer.seek_to_committed(*partitions)
                for tp, offset in found.items():
                    part = self.window.parts.get(tp)
                    if part is not None and offset is not None and offset >= 0:
                        part.tracker.committed = offset
        except (KafkaError, OSError) as exc:
            log.error(
                "could not start the partitions' transactional producers; stopping",
                extra={"error": type(exc).__name__, "detail": str(exc)},
            )
            self.exit_code = 1
            self.request_stop()
            return
        # Resume what the window does not hold paused for backpressure.
        source.resume(tp for tp in partitions if tp not in self.window.paused)

    async def _release(self, parts: list[PartitionState], timeout_s: float, *, why: str) -> None:
        if self._stop is None:  # a revoke: the group waits only so long for the listener
            self._revoke = Deadline(revoke_budget_s(self.settings))
        try:
            await super()._release(parts, timeout_s, why=why)  # drain, final txn, cancel
            await self._close_parts(parts, why)
        finally:
            self._revoke = None

    async def _close_parts(self, parts: list[PartitionState], why: str) -> None:
        txn = self._txn
        assert txn is not None
        tps = [part.tp for part in parts]
        producers = {tp: txn.parts[tp] for tp in tps if tp in txn.parts}
        held = {tp: len(p.held) for tp, p in producers.items()}
        # Aborts an open transaction (never half-committed), within the bound. A round's
        # transaction still in flight may finish meanwhile: only after it is the
        # "unresolved" flag a verdict (PartitionTxn.cut_off).
        dropped, stopped = await txn.close(tps, self._close_timeout())
        for tp in tps:
            self._release_slots(self._held.pop(tp, 0))
        unresolved = [tp for tp, p in producers.items() if p.unresolved]
        if unresolved:
            _log_unresolved(unresolved, sum(held[tp] for tp in unresolved), why)
        if dropped:
            log.info("held records dropped (redone by the next owner)", extra={"n": dropped})
        if not stopped:
            self._abandon_close(len(tps))

    def _close_timeout(self) -> float:
        if self._stop is not None:
            return self._stop.deadline.left()
        if self._revoke is not None:
            return self._revoke.left()
        return CLOSE_TIMEOUT_S

    def _abandon_close(self, n: int) -> None:
        what = f"closing the transactional producers of {n} partitions"
        if self._stop is not None:
            self._stop.abandon(what)
        else:
            log.warning(f"{what} timed out: their connections were dropped")

    async def _shutdown(self) -> None:
        try:
            await super()._shutdown()
        finally:
            if self._txn is not None:
                # Partitions a failed release left open (none after a normal stop).
                await self._txn.stop(self._close_timeout())


def _log_unresolved(tps: list[TopicPartition], held: int, why: str) -> None:
    """The last transaction of ``tps`` (the final one, or a round in flight) was cut off,
    the broker not answering in time: the next owner's ``init_transactions`` settles it."""
    log.warning(
        f"{why}: the last transaction of {len(tps)} partitions was cut off, its outcome "
        f"unknown; abandoned: {held} held records (redone by the next owner unless the "
        "transaction committed after all)",
        extra={"why": why, "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)},
    )
