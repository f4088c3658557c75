"""The Kafka worker: consumer group -> stages -> output topics, at least once.

Flow. The consume loop fetches micro-batches (``max_batch_records`` /
``max_batch_wait_ms``) and starts one task per record; there is no batch
barrier, so a slow LLM request holds back only its own record. The window of
records fetched and not finished is bounded by ``max_inflight_records``: when it
is full every assigned partition is paused (the consumer keeps polling, so it
stays in the group) and resumed below a low-water mark (hysteresis).

A record runs all stages concurrently, then publishes every stage's outputs (or
its dead letter, or its filtered copy). It is *finished* when the broker has
acknowledged all of them; only then is its offset marked done. A commit loop
commits each partition's contiguous finished prefix on an interval, on revoke and
at shutdown, so the committed offset never passes an unfinished record.

Rebalance: a revoked partition is paused, its in-flight records get
``drain_timeout_s`` to finish, its finished prefix is committed, and what is left
is cancelled (the new owner gets it again). Shutdown does the same for every
partition within ``shutdown_timeout_s``, then flushes, commits and leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from streamsynth.config import Settings
from streamsynth.engine.stage import RecordOutcome, RecordStage
from streamsynth.kafka.dlq import Failure, dlq_headers
from streamsynth.kafka.offsets import OffsetTracker
from streamsynth.kafka.records import (
    BadRecord,
    build_filtered,
    build_output,
    decode_value,
    output_key,
    source_meta,
)
from streamsynth.kafka.sink import OutMessage, Sink, SinkClosedError
from streamsynth.kafka.source import Source
from streamsynth.llm.client import AsyncLLMClient, LLMClient
from streamsynth.llm.factory import build_llm_client
from streamsynth.metrics.health import HealthState
from streamsynth.metrics.registry import Metrics
from streamsynth.stages.factory import BuiltStage, build_stages

log = logging.getLogger("streamsynth.kafka.worker")

#: Resume paused partitions once the window is this full (hysteresis against flapping).
RESUME_FRACTION = 0.75
#: Stage name in the DLQ headers for a failure outside any stage (a bug in the worker).
WORKER_STAGE = "worker"
#: Reason for a stage that returned neither outputs, a filter reason nor an error.
NO_OUTPUT = "no_output"
#: Tasks can start eagerly (run up to their first suspension at creation) from 3.12.
_EAGER = sys.version_info >= (3, 12)


@dataclass(eq=False, slots=True)
class _Partition:
    tp: TopicPartition
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    jobs: set[_Job] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Revoked or being revoked: fetch nothing more, commit nothing more after the drain.
    draining: bool = False
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Job:
    """One input record on its way through the stages."""

    part: _Partition
    msg: ConsumerRecord[bytes, bytes]
    remaining: int = 0
    task: asyncio.Task[None] | None = None
    finished: bool = False


@dataclass(slots=True)
class _Pub:
    """An output message with what its acknowledgement means for metrics."""

    out: OutMessage
    kind: str  # "output" | "dlq" | "filtered"
    stage: str
    reason: str = ""


@dataclass(slots=True)
class StageSpec:
    """A configured stage with its output topic and pre-bound metric children."""

    name: str
    stage: RecordStage
    topic: str
    segmented: bool = False
    # Bound lazily by the worker (prometheus children are cached per label set).
    produced: Any = None
    e2e: Any = None
    duration: Any = None


def stage_specs(built: Sequence[BuiltStage]) -> list[StageSpec]:
    """The worker's view of the configured stages: each with its output topic."""
    return [StageSpec(b.name, b.stage, b.config.output_topic, b.segmented) for b in built]


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
        self._stage_specs = list(stages) if stages is not None else None
        self._parts: dict[TopicPartition, _Partition] = {}
        self._paused: set[TopicPartition] = set()
        self._backpressure = False
        self._inflight = 0
        ws = settings.worker
        self._max_inflight = ws.max_inflight_records
        self._resume_at = max(0, int(ws.max_inflight_records * RESUME_FRACTION))
        self._room = asyncio.Event()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._source: Source | None = None
        self._sink: Sink | None = None
        self._single: StageSpec | None = None
        self._by_name: dict[str, StageSpec] = {}
        self._consumed: dict[str, Any] = {}
        self._text_field = settings.record.text_field
        self._id_field = settings.record.id_field
        self._max_bytes = settings.record.max_record_bytes
        self._dlq_topic = settings.kafka.dlq_topic
        self._filtered_topic = settings.kafka.filtered_topic
        self.exit_code = 0

    # -- public API -------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self._inflight

    def request_stop(self) -> None:
        """Ask for a graceful stop (drain, flush, commit, leave); safe from a signal handler."""
        self._stopping = True
        self._stop_event.set()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`, then shut down gracefully."""
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
        if self._stage_specs is None:
            if self.client is None:
                self.client = build_llm_client(
                    self.settings.llm, observer=self.metrics.llm_observer()
                )
            self._stage_specs = stage_specs(build_stages(self.settings, self.client))
        for spec in self._stage_specs:
            spec.produced = self.metrics.records_produced.labels(spec.name, spec.topic)
            spec.e2e = self.metrics.record_e2e_latency.labels(spec.name)
            spec.duration = self.metrics.stage_duration.labels(spec.name)
            await spec.stage.asetup()
        self._single = self._stage_specs[0] if len(self._stage_specs) == 1 else None
        self._by_name = {spec.name: spec for spec in self._stage_specs}
        self._sink = Sink(self.settings)
        await self._sink.start()
        self._source = Source(self.settings, self)
        try:
            await self._source.start()
        except BaseException:
            await self._sink.stop()
            raise
        self.health.mark_started()
        log.info(
            "worker started",
            extra={
                "group_id": self.settings.kafka.group_id,
                "topics": self.settings.kafka.input_topics,
                "stages": [s.name for s in self._stage_specs],
            },
        )

    # -- the consume loop -------------------------------------------------------------
    async def _consume_loop(self) -> None:
        assert self._source is not None
        source = self._source
        ws = self.settings.worker
        wait_ms = ws.max_batch_wait_ms
        wait_s = max(wait_ms, 50) / 1000
        errors = 0
        while not self._stopping:
            self.health.heartbeat()
            self._apply_backpressure()
            try:
                if self._backpressure:
                    # Wake as soon as the window has room; poll anyway so the consumer's
                    # max-poll-interval timer never runs out (paused partitions return nothing).
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), wait_s)
                    batch = await source.getmany(timeout_ms=0, max_records=1)
                else:
                    room = self._max_inflight - self._inflight
                    batch = await source.getmany(
                        timeout_ms=wait_ms, max_records=min(ws.max_batch_records, room)
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

    def _apply_backpressure(self) -> None:
        assert self._source is not None
        if not self._backpressure and self._inflight >= self._max_inflight:
            self._backpressure = True
            targets = [tp for tp in self._parts if tp not in self._paused]
            self._source.pause(targets)
            self._paused.update(targets)
        elif self._backpressure and self._inflight <= self._resume_at:
            self._backpressure = False
            targets = [tp for tp in self._paused if not self._parts[tp].draining]
            self._source.resume(targets)
            self._paused.difference_update(targets)
        self.metrics.partitions_paused.set(len(self._paused))
        self.metrics.inflight_records.set(self._inflight)

    def _dispatch(self, tp: TopicPartition, msgs: list[ConsumerRecord[bytes, bytes]]) -> None:
        part = self._parts.get(tp)
        if part is None or part.draining:
            return  # no longer ours: the new owner fetches these again
        counter = self._consumed.get(tp.topic)
        if counter is None:
            counter = self._consumed[tp.topic] = self.metrics.records_consumed.labels(tp.topic)
        counter.inc(len(msgs))
        tracker = part.tracker
        jobs = part.jobs
        started = 0
        for msg in msgs:
            if not tracker.add(msg.offset):
                continue  # fetched again in this generation: already in flight or done
            job = _Job(part, msg)
            jobs.add(job)
            self._inflight += 1
            started += 1
            self._start_job(job)
        if started and jobs:
            part.idle.clear()

    def _start_job(self, job: _Job) -> None:
        """One task per record, so a slow record holds back nothing but itself.

        On Python 3.12+ the task starts eagerly: a record whose stages answer without
        waiting (a cache hit, a bad record) finishes without a trip through the loop.
        (Stepping the coroutine by hand on 3.11 is not safe: ``asyncio.timeout`` in the
        LLM client would bind to the consume loop's task and cancel it.)
        """
        loop = asyncio.get_running_loop()
        if _EAGER:
            job.task = asyncio.Task(self._run_job(job), loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        else:
            job.task = loop.create_task(self._run_job(job))

    # -- one record -------------------------------------------------------------------
    async def _run_job(self, job: _Job) -> None:
        msg = job.msg
        try:
            doc = decode_value(msg.value, text_field=self._text_field, max_bytes=self._max_bytes)
            if isinstance(doc, BadRecord):
                failure = Failure.from_bad_record(doc)
                self._log_failure(job, failure)
                pubs = [self._dlq_pub(job, failure)]
            else:
                pubs = await self._process(job, doc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not lose the record: dead-letter it
            log.exception("record failed in the worker", extra=self._coords(job, WORKER_STAGE))
            pubs = [self._dlq_pub(job, Failure.from_exception(exc, stage=WORKER_STAGE))]
        # Shutting down: the record stays unfinished, so it is redelivered.
        with contextlib.suppress(SinkClosedError):
            self._publish(job, pubs)

    async def _process(self, job: _Job, doc: dict[str, Any]) -> list[_Pub]:
        single = self._single
        specs = self._stage_specs
        assert specs is not None
        if single is not None:
            outcomes: list[RecordOutcome] = [await self._run_stage(single, doc)]
        else:
            outcomes = list(await asyncio.gather(*(self._run_stage(s, doc) for s in specs)))
        msg = job.msg
        key = output_key(msg.key, doc, self._id_field)
        source = source_meta(msg.topic, msg.partition, msg.offset)
        pubs: list[_Pub] = []
        for spec, outcome in zip(specs, outcomes, strict=True):
            try:
                pubs.extend(self._stage_pubs(job, spec, outcome, doc, key, source))
            except Exception as exc:  # building the output failed: this stage's DLQ
                failure = Failure.from_exception(exc, stage=spec.name)
                self._log_failure(job, failure)
                pubs.append(self._dlq_pub(job, failure))
        return pubs

    async def _run_stage(self, spec: StageSpec, doc: dict[str, Any]) -> RecordOutcome:
        start = time.perf_counter()
        try:
            outcome = await spec.stage.aprocess_record(doc)
        except Exception as exc:  # the contract says it never raises; a bug must not sink us
            outcome = RecordOutcome(error=exc)
        spec.duration.observe(time.perf_counter() - start)
        return outcome

    def _stage_pubs(
        self,
        job: _Job,
        spec: StageSpec,
        outcome: RecordOutcome,
        doc: dict[str, Any],
        key: bytes | None,
        source: dict[str, Any],
    ) -> list[_Pub]:
        if outcome.error is not None:
            failure = Failure.from_exception(outcome.error, stage=spec.name)
            self._log_failure(job, failure)
            return [self._dlq_pub(job, failure)]
        if not self.health.llm_ok and outcome.calls:
            self.health.mark_llm_ok()
        reason = outcome.filtered
        if reason is None and not outcome.outputs:
            reason = NO_OUTPUT
        if reason is not None:
            self.metrics.records_filtered.labels(spec.name, reason).inc()
            if self._filtered_topic is None:
                return []
            value = build_filtered(doc, stage=spec.name, reason=reason, source=source)
            return [_Pub(OutMessage(self._filtered_topic, value, key), "filtered", spec.name)]
        outputs = outcome.outputs
        segmented = spec.segmented or len(outputs) > 1
        pubs = []
        for i, output in enumerate(outputs):
            segment = output.data.get("segment_index", i) if segmented else None
            value = build_output(output, stage=spec.name, source=source, segment=segment)
            pubs.append(_Pub(OutMessage(spec.topic, value, key), "output", spec.name))
        return pubs

    def _dlq_pub(self, job: _Job, failure: Failure) -> _Pub:
        msg = job.msg
        headers = dlq_headers(failure, topic=msg.topic, partition=msg.partition, offset=msg.offset)
        out = OutMessage(self._dlq_topic, msg.value, msg.key, headers)
        return _Pub(out, "dlq", failure.stage, failure.reason)

    # -- publishing and finishing -----------------------------------------------------
    def _publish(self, job: _Job, pubs: list[_Pub]) -> None:
        if not pubs:
            self._finish(job)
            return
        job.remaining = len(pubs)
        assert self._sink is not None
        submit = self._sink.submit
        for pub in pubs:
            submit(pub.out, partial(self._on_ack, job, pub))

    def _on_ack(self, job: _Job, pub: _Pub, exc: BaseException | None) -> None:
        if job.finished:
            return  # cancelled on revoke/shutdown: the new owner redoes it
        if exc is not None:
            self._on_permanent_failure(job, pub, exc)
            return
        if pub.kind == "output":
            spec = self._by_name[pub.stage]
            spec.produced.inc()
            ts = job.msg.timestamp
            if ts and ts > 0:
                spec.e2e.observe(max(0.0, time.time() - ts / 1000))
        elif pub.kind == "dlq":
            self.metrics.records_dlq.labels(pub.stage, pub.reason).inc()
        job.remaining -= 1
        if job.remaining == 0:
            self._finish(job)

    def _on_permanent_failure(self, job: _Job, pub: _Pub, exc: BaseException) -> None:
        """The broker refuses the message (too large): dead-letter instead of retrying forever."""
        if pub.kind == "dlq" and pub.out.value is not None:
            # Even the original value is too large for the broker: keep the headers and key,
            # say the value was left out, and let the record finish.
            headers = [*(pub.out.headers or []), ("streamsynth.error.value_omitted", b"true")]
            replacement = _Pub(
                OutMessage(pub.out.topic, None, pub.out.key, headers), "dlq", pub.stage, pub.reason
            )
        elif pub.kind == "dlq":
            log.error("the DLQ refuses even an empty value", extra=self._coords(job, pub.stage))
            return  # unfinished: never committed; an operator must fix the broker limits
        else:
            failure = Failure.from_exception(exc, stage=pub.stage)
            self._log_failure(job, failure)
            replacement = self._dlq_pub(job, failure)
        assert self._sink is not None
        with contextlib.suppress(SinkClosedError):
            self._sink.submit(replacement.out, partial(self._on_ack, job, replacement))

    def _finish(self, job: _Job) -> None:
        job.finished = True
        part = job.part
        part.jobs.discard(job)
        self._inflight -= 1
        if not part.closed:
            part.tracker.done(job.msg.offset)
        if not part.jobs:
            part.idle.set()
        if self._inflight <= self._resume_at:
            self._room.set()

    def _abandon(self, part: _Partition) -> int:
        """Cancel the partition's unfinished records; they will be fetched again."""
        jobs = list(part.jobs)
        for job in jobs:
            job.finished = True
            if job.task is not None and not job.task.done():
                job.task.cancel()
        part.jobs.clear()
        part.idle.set()
        self._inflight -= len(jobs)
        if self._inflight <= self._resume_at:
            self._room.set()
        return len(jobs)

    # -- commits ----------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        interval = self.settings.worker.commit_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.commit()

    async def commit(self, parts: Sequence[_Partition] | None = None) -> bool:
        """Commit the finished prefix of ``parts`` (default: every owned partition)."""
        assert self._source is not None
        async with self._commit_lock:
            chosen = list(self._parts.values()) if parts is None else list(parts)
            offsets = {}
            for part in chosen:
                if part.closed:
                    continue
                position = part.tracker.to_commit()
                if position is not None:
                    offsets[part.tp] = position
            ok = True
            if offsets:
                try:
                    await self._source.commit(offsets)
                except KafkaError as exc:
                    ok = False
                    self.metrics.offset_commits.labels("failed").inc()
                    log.warning("offset commit failed", extra={"error": type(exc).__name__})
                else:
                    self.metrics.offset_commits.labels("ok").inc()
                    by_tp = {part.tp: part for part in chosen}
                    for tp, position in offsets.items():
                        by_tp[tp].tracker.committed = position
            self._update_gauges(chosen)
            return ok

    def _update_gauges(self, parts: list[_Partition]) -> None:
        assert self._source is not None
        m = self.metrics
        m.inflight_records.set(self._inflight)
        for part in parts:
            labels = (part.tp.topic, str(part.tp.partition))
            committed = part.tracker.committed
            m.uncommitted.labels(*labels).set(part.tracker.uncommitted)
            if committed is not None:
                m.committed_offset.labels(*labels).set(committed)
            lag = self._source.lag(part.tp, committed)
            if lag is not None:
                m.consumer_lag.labels(*labels).set(lag)

    # -- rebalance (called by the consumer's listener) --------------------------------
    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoked").inc()
        parts = [self._parts[tp] for tp in partitions if tp in self._parts]
        if not parts:
            return
        await self._release(parts, self.settings.worker.drain_timeout_s, why="revoke")

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        assert self._source is not None
        for tp in partitions:
            if tp not in self._parts:
                part = _Partition(tp)
                part.idle.set()
                self._parts[tp] = part
        if self._backpressure:
            fresh = [tp for tp in partitions if tp not in self._paused]
            self._source.pause(fresh)
            self._paused.update(fresh)
        self.metrics.partitions_assigned.set(len(self._parts))
        self.health.mark_joined(True)
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    async def _release(self, parts: list[_Partition], timeout_s: float, *, why: str) -> None:
        """Stop fetching ``parts``, drain them, commit their finished prefix, drop the rest."""
        assert self._source is not None
        for part in parts:
            part.draining = True
        self._source.pause([p.tp for p in parts if p.tp not in self._paused])
        drained = await self._drain(parts, timeout_s)
        await self.commit(parts)
        abandoned = 0
        for part in parts:
            part.closed = True
            abandoned += self._abandon(part)
            self._parts.pop(part.tp, None)
            self._paused.discard(part.tp)
        self.metrics.partitions_assigned.set(len(self._parts))
        self.metrics.partitions_paused.set(len(self._paused))
        log.info(
            "partitions released",
            extra={
                "why": why,
                "partitions": _names(p.tp for p in parts),
                "drained": drained,
                "abandoned": abandoned,
            },
        )

    async def _drain(self, parts: list[_Partition], timeout_s: float) -> bool:
        """Wait until ``parts`` have no unfinished record; False when ``timeout_s`` ran out."""
        waits = [asyncio.ensure_future(p.idle.wait()) for p in parts if p.jobs]
        if not waits:
            return True
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        for fut in pending:
            fut.cancel()
        return not pending

    # -- shutdown ---------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self.health.mark_stopping()
        ws = self.settings.worker
        try:
            if self._source is not None and self._parts:
                await self._release(
                    list(self._parts.values()), ws.shutdown_timeout_s, why="shutdown"
                )
        finally:
            if self._source is not None:
                with contextlib.suppress(KafkaError):
                    await self._source.stop()
            if self._sink is not None:
                await self._sink.stop()
            for spec in self._stage_specs or []:
                with contextlib.suppress(Exception):
                    await spec.stage.ateardown()
            await self._close_client()
        log.info("worker stopped")

    async def _close_client(self) -> None:
        if self._own_client and self.client is not None:
            aclose = getattr(self.client, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    # -- logging ----------------------------------------------------------------------
    @staticmethod
    def _coords(job: _Job, stage: str) -> dict[str, Any]:
        msg = job.msg
        return {
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "stage": stage,
        }

    def _log_failure(self, job: _Job, failure: Failure) -> None:
        # Never the record text or the full message: the class and reason say enough.
        log.warning(
            "record dead-lettered",
            extra={
                **self._coords(job, failure.stage),
                "error_class": failure.error_class,
                "reason": failure.reason,
                "attempts": failure.attempts,
            },
        )


def _names(tps: Any) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
