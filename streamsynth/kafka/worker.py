"""The Kafka worker: consumer group -> stages -> output topics, at least once.

The consume loop fetches micro-batches and starts one task per record (no batch
barrier: a slow LLM request holds back only its own record), within the bounded
window of :mod:`~streamsynth.kafka.inflight`. A record runs through its stages
(all at once, or as a stage graph; :mod:`~streamsynth.kafka.processing`) and
:mod:`~streamsynth.kafka.routing` turns the outcomes into outputs, filtered copies
or dead letters. The record is *finished* when every stage has finished every row
it received and the broker has acknowledged all their messages; only then is its
offset marked done. A commit loop commits each partition's contiguous finished
prefix on an interval, on revoke and at shutdown, so the committed offset never
passes an unfinished record; the commit's metadata lists what is finished beyond
it, and a new owner skips that (:mod:`~streamsynth.kafka.offsets`).

Rebalance: a revoked partition is paused, records that sent no LLM request yet are
released at once, those on the wire get ``drain_timeout_s``, the finished prefix is
committed, and the rest is cancelled (the new owner gets it again). Shutdown does
the same for every partition, then leaves, flushes and closes, all within
``shutdown_timeout_s`` (:mod:`~streamsynth.kafka.shutdown`). The process around
the worker (signals, metrics server, exit codes) is :mod:`~streamsynth.kafka.runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from streamsynth.config import Settings
from streamsynth.kafka.dlq import Failure
from streamsynth.kafka.inflight import InflightWindow, Job, PartitionState, drained
from streamsynth.kafka.processing import StageRunner, StageSpec, coords, log_failure, stage_specs
from streamsynth.kafka.records import BadRecord, decode_value
from streamsynth.kafka.routing import WORKER_STAGE, Publication, Routed, Router, without_value
from streamsynth.kafka.shutdown import INCOMPLETE_EXIT_CODE, Shutdown
from streamsynth.kafka.sink import Sink, SinkClosedError
from streamsynth.kafka.source import Source
from streamsynth.llm import onwire
from streamsynth.llm.client import AsyncLLMClient, LLMClient
from streamsynth.llm.factory import build_llm_client
from streamsynth.metrics.health import HealthState, ReadinessObserver
from streamsynth.metrics.registry import Metrics
from streamsynth.stages.factory import build_stages

log = logging.getLogger("streamsynth.kafka.worker")

__all__ = ["StageSpec", "Worker", "stage_specs"]  # StageSpec, stage_specs: kafka.processing

#: Tasks can start eagerly (run up to their first suspension at creation) from 3.12.
_EAGER = sys.version_info >= (3, 12)
#: Bound of one commit (or committed-offset read) outside shutdown: in a broker outage
#: aiokafka waits for a coordinator forever, holding the commit lock.
COMMIT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class _Running:
    """What exists only between start and shutdown (built once, in ``_start``)."""

    source: Source
    sink: Sink
    runner: StageRunner

    @property
    def stages(self) -> list[StageSpec]:
        return self.runner.stages

    @property
    def by_name(self) -> dict[str, StageSpec]:
        return self.runner.by_name


class Worker:
    """One consumer-group member running the configured stages. See the module doc."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: AsyncLLMClient | LLMClient | None = None,
        stages: Sequence[StageSpec] | None = None,
        metrics: Metrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(provider=settings.llm.provider)
        self.health = health or HealthState()
        self._own_client = client is None and stages is None
        self.client = client
        self._given_stages = list(stages) if stages is not None else None
        self.window = InflightWindow(settings.worker.max_inflight_records)
        self.router = Router.from_settings(settings)
        self._run: _Running | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._consumed: dict[str, Any] = {}
        self._text_field = settings.record.text_field
        self._max_bytes = settings.record.max_record_bytes
        self.exit_code = 0
        #: Assignment skips what the commit metadata calls finished (exactly-once commits
        #: in transactions, without it).
        self.skips_finished = settings.kafka.processing_guarantee == "at_least_once"
        self._stop: Shutdown | None = None  # the shutdown in progress: its deadline
        #: The loop of :meth:`run`, looked up once: on 3.11 ``get_running_loop`` makes a
        #: getpid system call, once per record in :meth:`_start_job`.
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public API -------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self.window.count

    @property
    def running(self) -> _Running:
        """The clients and stages of a started worker."""
        if self._run is None:
            raise RuntimeError("the worker is not running")
        return self._run

    def request_stop(self) -> None:
        """Ask for a graceful stop (drain, flush, commit, leave); safe from a signal handler."""
        self._stopping = True
        self._stop_event.set()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`, then shut down gracefully."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._start()
        except BaseException:
            await self._close_client()
            raise
        commit_task = asyncio.get_running_loop().create_task(self._commit_loop())
        try:
            await self._consume_loop()
        finally:
            commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await commit_task
            await self._shutdown()

    # -- start-up ---------------------------------------------------------------------
    async def _start(self) -> None:
        specs = self._given_stages
        if specs is None:
            if self.client is None:
                # Readiness hears the circuit breakers through the metrics observer.
                self.client = build_llm_client(
                    self.settings.llm, observer=ReadinessObserver(self.metrics, self.health)
                )
            specs = stage_specs(build_stages(self.settings, self.client))
        runner = await StageRunner.start(
            self.settings, specs, self.router, self.metrics, self.health
        )
        sink = Sink(self.settings)
        await sink.start()
        source = Source(self.settings, self)
        try:
            await source.start()
        except BaseException:
            await sink.stop()
            raise
        self._run = _Running(source, sink, runner)
        self.health.mark_started()
        log.info(
            "worker started",
            extra={
                "group_id": self.settings.kafka.group_id,
                "topics": self.settings.kafka.input_topics,
                "stages": [s.name for s in specs],
            },
        )

    # -- the consume loop -------------------------------------------------------------
    async def _consume_loop(self) -> None:
        source = self.running.source
        window = self.window
        ws = self.settings.worker
        wait_ms = ws.max_batch_wait_ms
        wait_s = max(wait_ms, 50) / 1000
        errors = 0
        while not self._stopping:
            self.health.heartbeat()
            self._apply_backpressure(source)
            try:
                if window.backpressure:
                    # Wake as soon as the window has room; poll anyway so the consumer's
                    # max-poll-interval timer never runs out (paused partitions return nothing).
                    window.room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(window.room.wait(), wait_s)
                    batch = await source.getmany(timeout_ms=0, max_records=1)
                else:
                    batch = await source.getmany(
                        timeout_ms=wait_ms, max_records=min(ws.max_batch_records, window.free)
                    )
                errors = 0
            except KafkaError as exc:
                errors += 1
                log.warning("fetch failed", extra={"error": type(exc).__name__, "n": errors})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), min(5.0, 0.1 * 2**errors))
                continue
            for tp, msgs in batch.items():
                self._dispatch(tp, msgs)

    def _apply_backpressure(self, source: Source) -> None:
        to_pause, to_resume = self.window.update_backpressure()
        source.pause(to_pause)
        source.resume(to_resume)
        self.metrics.partitions_paused.set(len(self.window.paused))
        self.metrics.inflight_records.set(self.window.count)
        self.metrics.records_awaiting_ack.set(self.window.publishing)

    def _dispatch(self, tp: TopicPartition, msgs: list[ConsumerRecord[bytes, bytes]]) -> None:
        part = self.window.fetching(tp)
        if part is None:
            return  # no longer ours: the new owner fetches these again
        counter = self._consumed.get(tp.topic)
        if counter is None:
            counter = self._consumed[tp.topic] = self.metrics.records_consumed.labels(tp.topic)
        counter.inc(len(msgs))
        admit = self.window.admit
        for msg in msgs:
            job = admit(part, msg)
            if job is not None:
                self._start_job(job)

    def _start_job(self, job: Job) -> None:
        """One task per record, so a slow record holds back nothing but itself.

        On Python 3.12+ the task starts eagerly: a record whose stages answer without
        waiting (a cache hit, a bad record) finishes without a trip through the loop.
        (Stepping the coroutine by hand on 3.11 is not safe: ``asyncio.timeout`` in the
        LLM client would bind to the consume loop's task and cancel it.)
        """
        loop = self._loop or asyncio.get_running_loop()
        if _EAGER:
            task = asyncio.Task(self._run_job(job), loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
            if not task.done():  # done already: _run_job has let go of it (see there)
                job.task = task
        else:
            job.task = loop.create_task(self._run_job(job))

    # -- one record -------------------------------------------------------------------
    async def _run_job(self, job: Job) -> None:
        msg = job.msg
        onwire.track(job)  # the LLM client flags the job once a request is sent
        try:
            doc = decode_value(msg.value, text_field=self._text_field, max_bytes=self._max_bytes)
            runner = self.running.runner
            if isinstance(doc, BadRecord):
                routed = self.router.failed(msg, Failure.from_bad_record(doc))
            else:
                routed = await runner.process(msg, doc)
            runner.account(msg, routed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not lose the record: dead-letter it
            log.exception("record failed in the worker", extra=coords(msg, WORKER_STAGE))
            failure = Failure.from_exception(exc, stage=WORKER_STAGE)
            routed = Routed([self.router.dead_letter(msg, failure)])
        # Not contextlib.suppress: that is an object and two calls per record.
        try:  # noqa: SIM105
            self._publish(job, routed.publications)
        except SinkClosedError:
            pass  # shutting down: the record stays unfinished, so it is redelivered
        # Nothing cancels a task that has returned. Holding it would make a reference
        # cycle (job -> task -> its context, where onwire.track put the job): only the
        # cyclic GC frees those, and its full passes over thousands of records in flight
        # cost the worker about a fifth of its CPU.
        job.task = None

    # -- publishing and acknowledgements ----------------------------------------------
    def _publish(self, job: Job, pubs: list[Publication]) -> None:
        if not pubs:
            self.window.finish(job)
            return
        job.remaining = len(pubs)
        submit = self.running.sink.submit
        for pub in pubs:
            submit(pub.out, partial(self._on_ack, job, pub))
        # Its slot for work in the stages is free now; it waits for acks in the other part.
        self.window.published(job)

    def _on_ack(self, job: Job, pub: Publication, exc: BaseException | None) -> None:
        if job.finished:
            return  # cancelled on revoke/shutdown: the new owner redoes it
        if exc is not None:
            self._on_permanent_failure(job, pub, exc)
            return
        if pub.kind == "output":
            spec = self.running.runner.by_name[pub.stage]
            spec.produced.inc()
            ts = job.msg.timestamp
            if ts and ts > 0:
                spec.e2e.observe(max(0.0, time.time() - ts / 1000))
        elif pub.kind == "dlq":
            self.metrics.records_dlq.labels(pub.stage, pub.reason).inc()
        job.remaining -= 1
        if job.remaining == 0:
            self.window.finish(job)

    def _on_permanent_failure(self, job: Job, pub: Publication, exc: BaseException) -> None:
        """The broker refuses the message (too large): dead-letter instead of retrying forever."""
        if pub.kind == "dlq" and pub.out.value is not None:
            # Even the original value is too large for the broker: keep the headers and key,
            # say the value was left out, and let the record finish.
            replacement = without_value(pub)
        elif pub.kind == "dlq":
            log.error("the DLQ refuses even an empty value", extra=coords(job.msg, pub.stage))
            return  # unfinished: never committed; an operator must fix the broker limits
        else:
            failure = Failure.from_exception(exc, stage=pub.stage)
            log_failure(job.msg, failure)
            replacement = self.router.dead_letter(job.msg, failure)
        with contextlib.suppress(SinkClosedError):
            self.running.sink.submit(replacement.out, partial(self._on_ack, job, replacement))

    # -- commits ----------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        interval = self.settings.worker.commit_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.commit()

    async def commit(self, parts: Sequence[PartitionState] | None = None) -> bool:
        """Commit the finished prefix of ``parts`` (default: every owned partition) and,
        as metadata, what is finished beyond it. False when it failed or timed out."""
        source = self.running.source
        try:
            bound = COMMIT_TIMEOUT_S if self._stop is None else self._stop.deadline.left()
            async with asyncio.timeout(bound):
                async with self._commit_lock:
                    return await self._commit_locked(source, parts)
        except TimeoutError:
            # The broker (or its coordinator) does not answer: counted like a failure.
            self.metrics.offset_commits.labels("failed").inc()
            log.warning("offset commit timed out")
            return False

    async def _commit_locked(self, source: Source, parts: Sequence[PartitionState] | None) -> bool:
        chosen = list(self.window.parts.values()) if parts is None else list(parts)
        due = {p: c for p in chosen if (c := p.to_commit_with_metadata()) is not None}
        ok = True
        if due:
            try:
                await source.commit(
                    {p.tp: off for p, (off, _) in due.items()},
                    {p.tp: meta for p, (_, meta) in due.items()},
                )
            except KafkaError as exc:
                ok = False
                self.metrics.offset_commits.labels("failed").inc()
                log.warning("offset commit failed", extra={"error": type(exc).__name__})
            else:
                self.metrics.offset_commits.labels("ok").inc()
                for part, (position, metadata) in due.items():
                    part.committed(position, metadata)
        self._update_gauges(source, chosen)
        return ok

    def _update_gauges(self, source: Source, parts: list[PartitionState]) -> None:
        m = self.metrics
        m.inflight_records.set(self.window.count)
        for part in parts:
            labels = (part.tp.topic, str(part.tp.partition))
            committed = part.tracker.committed
            m.uncommitted.labels(*labels).set(part.tracker.uncommitted)
            if committed is not None:
                m.committed_offset.labels(*labels).set(committed)
            lag = source.lag(part.tp, committed)
            if lag is not None:
                m.consumer_lag.labels(*labels).set(lag)

    # -- rebalance (called by the consumer's listener) --------------------------------
    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoked").inc()
        owned = self.window.parts
        parts = [owned[tp] for tp in partitions if tp in owned]
        if not parts:
            return
        await self._release(parts, self.settings.worker.drain_timeout_s, why="revoke")

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        source = self.running.source
        to_pause = self.window.assign(partitions)
        if self.skips_finished and partitions:
            # Nothing may be fetched before the trackers know what is finished already.
            source.pause(partitions)
            try:
                found = await source.committed_with_metadata(partitions, COMMIT_TIMEOUT_S)
            except (TimeoutError, KafkaError) as exc:  # safe: the plain prefix then
                log.warning("commit metadata unreadable", extra={"error": type(exc).__name__})
                found = {}
            if skipped := self.window.resume_finished(found):
                names = {f"{tp.topic}[{tp.partition}]": n for tp, n in skipped.items()}
                log.info("skipping records finished by the last owner", extra={"finished": names})
            source.resume(tp for tp in partitions if tp not in self.window.paused)
        source.pause(to_pause)
        self.metrics.partitions_assigned.set(len(self.window.parts))
        self.health.mark_joined(True)
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    async def _release(self, parts: list[PartitionState], timeout_s: float, *, why: str) -> None:
        """Stop fetching ``parts``, drain them, commit their finished prefix, drop the rest."""
        window = self.window
        started = time.monotonic()
        self.running.source.pause(window.start_draining(parts))
        # A revoke waits only for what the LLM is working on: a record still queued for
        # a slot costs its next owner nothing to redo, and waiting for it stalls the group.
        released = window.release_unstarted(parts) if why == "revoke" else 0
        done = await drained(parts, timeout_s)
        committed = await self.commit(parts)
        if self._stop is not None and not committed:
            self._stop.abandon(f"the final commit of {len(parts)} partitions")
        abandoned = window.close(parts)
        self.metrics.partitions_assigned.set(len(window.parts))
        self.metrics.partitions_paused.set(len(window.paused))
        log.info(
            "partitions released",
            extra={
                "why": why,
                "partitions": _names(p.tp for p in parts),
                "drained": done,
                "released_unstarted": released,
                "abandoned": abandoned,
                "took_s": round(time.monotonic() - started, 3),
            },
        )

    # -- shutdown ---------------------------------------------------------------------
    async def _shutdown(self) -> None:
        """Drain, commit, leave, flush, close: all within ``shutdown_timeout_s``
        (:mod:`~streamsynth.kafka.shutdown`)."""
        self.health.mark_stopping()
        stop = self._stop = Shutdown(self.settings.worker.shutdown_timeout_s)
        # With "partitions released" and "worker stopped", this line dates each step of
        # a shutdown in the log (a stop that hangs shows where).
        log.info(
            "shutting down",
            extra={"in_window": self.window.count, "shutdown_timeout_s": stop.deadline.budget_s},
        )
        run = self._run
        try:
            if run is not None and self.window.parts:
                parts = list(self.window.parts.values())
                await self._release(parts, stop.deadline.drain_s(), why="shutdown")
        finally:
            if run is not None:
                await stop.stop_clients(run.source, run.sink, run.runner.teardown())
            await self._close_client()
        if stop.report(log):
            self.exit_code = self.exit_code or INCOMPLETE_EXIT_CODE
        log.info("worker stopped")

    async def _close_client(self) -> None:
        if self._own_client and self.client is not None:
            aclose = getattr(self.client, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):  # closing must not mask the stop
                    if self._stop is None:
                        await aclose()
                    else:
                        await self._stop.step("closing the LLM client", aclose())


def _names(tps: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
