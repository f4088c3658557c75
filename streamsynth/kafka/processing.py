"""One decoded record through the configured stages, and the per-stage metrics.

:class:`StageRunner` holds the stages of a running worker. :meth:`StageRunner.process`
runs them on a record, every stage at once, or, with ``when:``/``input_from:``
keys, as a graph (:mod:`streamsynth.engine.graph`: a stage only on the rows its
conditions select, a chained stage on each output row of its upstream), and asks
:mod:`~streamsynth.kafka.routing` for the messages to publish.
:meth:`StageRunner.account` then counts and logs what routing decided (routing
itself neither counts nor logs). Publishing and acknowledgements stay in the
worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamsynth.config import ConfigError
from streamsynth.engine.graph import StageGraph, evaluate
from streamsynth.engine.stage import RecordOutcome, RecordStage
from streamsynth.kafka.dlq import Failure
from streamsynth.kafka.routing import Routed, Router
from streamsynth.logging import record_fields

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    from streamsynth.config import Settings
    from streamsynth.metrics.health import HealthState
    from streamsynth.metrics.registry import Metrics
    from streamsynth.stages.factory import BuiltStage

# The worker's logger: operators search "record dead-lettered" under it.
log = logging.getLogger("streamsynth.kafka.worker")


@dataclass(slots=True)
class StageSpec:
    """A configured stage with its output topic and pre-bound metric children."""

    name: str
    stage: RecordStage
    topic: str
    segmented: bool = False
    #: Enters its outputs' ids (set at start from the stage).
    prompt_sha256: str | None = None
    # Bound at start (prometheus children are cached per label set).
    produced: Any = None
    e2e: Any = None
    duration: Any = None
    skipped: Any = None


def stage_specs(built: Sequence[BuiltStage]) -> list[StageSpec]:
    """The worker's view of the configured stages: each with its output topic."""
    return [StageSpec(b.name, b.stage, b.config.output_topic, b.segmented) for b in built]


def graph_for(settings: Settings, specs: Sequence[StageSpec]) -> StageGraph | None:
    """The configured stage graph, or None when it is flat (every stage on every record)."""
    graph = settings.stage_graph()
    if graph.is_flat():
        return None
    missing = sorted(set(graph.nodes) - {s.name for s in specs})
    if missing:
        raise ConfigError(f"stages: the graph names stages that were not built: {missing}")
    return graph


class StageRunner:
    """The stages of a running worker: run them on a record, account for the result."""

    def __init__(
        self,
        specs: list[StageSpec],
        graph: StageGraph | None,
        router: Router,
        metrics: Metrics,
        health: HealthState,
    ) -> None:
        self.stages = specs
        self.by_name = {s.name: s for s in specs}
        self.graph = graph
        #: The only stage of a flat configuration (skips the gather).
        self.single = specs[0] if len(specs) == 1 and graph is None else None
        self._router = router
        self._metrics = metrics
        self._health = health

    @classmethod
    async def start(
        cls,
        settings: Settings,
        specs: list[StageSpec],
        router: Router,
        metrics: Metrics,
        health: HealthState,
    ) -> StageRunner:
        """Bind each stage's metric children, set the stages up, check the graph."""
        for spec in specs:
            spec.produced = metrics.records_produced.labels(spec.name, spec.topic)
            spec.e2e = metrics.record_e2e_latency.labels(spec.name)
            spec.duration = metrics.stage_duration.labels(spec.name)
            spec.skipped = metrics.records_skipped.labels(spec.name)
            spec.prompt_sha256 = spec.stage.prompt_sha256()
            await spec.stage.asetup()
        return cls(specs, graph_for(settings, specs), router, metrics, health)

    async def teardown(self) -> None:
        for spec in self.stages:
            with contextlib.suppress(Exception):
                await spec.stage.ateardown()

    # -- one record -----------------------------------------------------------------------
    async def process(self, msg: ConsumerRecord[bytes, bytes], doc: dict[str, Any]) -> Routed:
        """Every stage's outcome on ``doc``, turned into the messages to publish."""
        if self.graph is not None:
            runs = await evaluate(self.graph, doc, self._run_named)
            return self._router.route_graph(msg, doc, runs, self.by_name)
        if self.single is not None:
            outcomes: list[RecordOutcome] = [await self._run_stage(self.single, doc)]
        else:
            outcomes = list(await asyncio.gather(*(self._run_stage(s, doc) for s in self.stages)))
        return self._router.route(msg, doc, self.stages, outcomes)

    async def _run_named(self, name: str, row: Mapping[str, Any]) -> RecordOutcome:
        return await self._run_stage(self.by_name[name], row)

    async def _run_stage(self, spec: StageSpec, doc: Mapping[str, Any]) -> RecordOutcome:
        start = time.perf_counter()
        try:
            outcome = await spec.stage.aprocess_record(doc)
        except Exception as exc:  # the contract says it never raises; a bug must not sink us
            outcome = RecordOutcome(error=exc)
        spec.duration.observe(time.perf_counter() - start)
        return outcome

    def account(self, msg: ConsumerRecord[bytes, bytes], routed: Routed) -> None:
        """Count and log what routing decided for ``msg``."""
        for failure in routed.failures:
            log_failure(msg, failure)
        if routed.llm_answered and not self._health.llm_ok:
            self._health.mark_llm_ok()
        metrics = self._metrics
        for stage, reason in routed.filtered:
            metrics.records_filtered.labels(stage, reason).inc()
        for stage, answers in routed.truncated:
            metrics.answers_truncated.labels(stage).inc(answers)
        for stage in routed.skipped:
            self.by_name[stage].skipped.inc()


# -- logging ------------------------------------------------------------------------------
def coords(msg: ConsumerRecord[bytes, bytes], stage: str, **more: Any) -> dict[str, Any]:
    """``extra=`` for a log line about ``msg`` (see :func:`streamsynth.logging.record_fields`)."""
    return record_fields(msg.topic, msg.partition, msg.offset, stage, **more)


def log_failure(msg: ConsumerRecord[bytes, bytes], failure: Failure) -> None:
    """One warning per dead-lettered record and stage."""
    # Never the record text or the full message: the class and reason say enough.
    extra = coords(
        msg,
        failure.stage,
        error_class=failure.error_class,
        reason=failure.reason,
        attempts=failure.attempts,
    )
    log.warning("record dead-lettered", extra=extra)
