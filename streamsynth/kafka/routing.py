"""A decoded record and its stages' outcomes -> the messages to publish.

For each stage, in config order:

* an error -> the record's dead letter (original key and value, KIP-1034 headers);
* a filter reason, or no output at all -> a copy on the filtered topic, if one is
  configured (counted either way);
* outputs -> one message per output on the stage's topic (one per segment for
  segment-unit tasks), keyed like the input.

With a stage graph (:mod:`streamsynth.engine.graph`), :meth:`Router.route_graph`
does the same for every stage run, upstream first: a run skipped by its ``when`` is
published nowhere (only counted), a chained stage's outputs name their ``parent``
(the upstream stage and its output's id), and a chained stage's dead letter says
which upstream output it was working on.

Building a stage's messages can itself fail (an output that cannot be serialized):
that stage's record is dead-lettered instead. Nothing here logs, counts or sends:
:class:`Routed` tells the worker what to count and log, so routing stays a pure
function of its inputs (above ``records`` and ``dlq``, below the worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from streamsynth.kafka.dlq import Failure, dlq_headers
from streamsynth.kafka.records import (
    build_filtered,
    build_output,
    document_id,
    output_id_of,
    output_key,
    source_meta,
)
from streamsynth.kafka.sink import OutMessage

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    from streamsynth.config import Settings
    from streamsynth.engine.graph import StageRun
    from streamsynth.engine.stage import RecordOutcome

#: Stage name in the DLQ headers for a failure outside any stage (a bug in the worker).
WORKER_STAGE = "worker"
#: Reason for a stage that returned neither outputs, a filter reason nor an error.
NO_OUTPUT = "no_output"
#: Header added when even the original value is too large for the DLQ.
VALUE_OMITTED_HEADER = "streamsynth.error.value_omitted"
#: Headers of a chained stage's dead letter: the upstream output the branch started from.
PARENT_STAGE_HEADER = "streamsynth.error.parent_stage"
PARENT_ID_HEADER = "streamsynth.error.parent_id"

PublicationKind = Literal["output", "dlq", "filtered"]


class RoutedStage(Protocol):
    """What routing needs to know of a stage.

    A stage may also have ``prompt_sha256`` (a str or None), which enters its outputs' ids.
    """

    @property
    def name(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def segmented(self) -> bool: ...


@dataclass(slots=True)
class Publication:
    """A message to publish, with what its acknowledgement means for the metrics."""

    out: OutMessage
    kind: PublicationKind
    stage: str
    reason: str = ""


class Routed:
    """The publications of one record, and what the worker should count and log.

    A plain class, not a dataclass: one is built per record, and five
    ``default_factory`` calls cost more than the lists.
    """

    __slots__ = ("failures", "filtered", "llm_answered", "publications", "skipped", "truncated")

    def __init__(
        self,
        publications: list[Publication] | None = None,
        failures: list[Failure] | None = None,
    ) -> None:
        self.publications: list[Publication] = [] if publications is None else publications
        #: Records dead-lettered, for the log (the DLQ metric counts acknowledgements).
        self.failures: list[Failure] = [] if failures is None else failures
        #: (stage, reason) of every filtered stage, published or not.
        self.filtered: list[tuple[str, str]] = []
        #: Some stage got an answer from the LLM (readiness evidence).
        self.llm_answered = False
        #: The stage of every row a stage's ``when`` skipped (finished, published nowhere).
        self.skipped: list[str] = []
        #: (stage, answers) that stopped at max_tokens, whatever became of them.
        self.truncated: list[tuple[str, int]] = []


class Router:
    """Builds publications for the configured topics and record fields."""

    __slots__ = ("dlq_topic", "filtered_topic", "id_field")

    def __init__(self, *, dlq_topic: str, filtered_topic: str | None, id_field: str) -> None:
        self.dlq_topic = dlq_topic
        self.filtered_topic = filtered_topic
        self.id_field = id_field

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        """The router of a worker configured by ``settings``."""
        return cls(
            dlq_topic=settings.kafka.dlq_topic,
            filtered_topic=settings.kafka.filtered_topic,
            id_field=settings.record.id_field,
        )

    def dead_letter(self, msg: ConsumerRecord[bytes, bytes], failure: Failure) -> Publication:
        """The record's original key and value on the DLQ, with the failure in headers."""
        headers = dlq_headers(failure, topic=msg.topic, partition=msg.partition, offset=msg.offset)
        out = OutMessage(self.dlq_topic, msg.value, msg.key, headers)
        return Publication(out, "dlq", failure.stage, failure.reason)

    def failed(self, msg: ConsumerRecord[bytes, bytes], failure: Failure) -> Routed:
        """A record that reached no stage (undecodable, or a bug in the worker)."""
        return Routed([self.dead_letter(msg, failure)], [failure])

    def route(
        self,
        msg: ConsumerRecord[bytes, bytes],
        doc: dict[str, Any],
        stages: Sequence[RoutedStage],
        outcomes: Sequence[RecordOutcome],
    ) -> Routed:
        """Every stage's publications for one decoded record (``outcomes`` in stage order)."""
        ctx = _Context(msg, doc, self.id_field)
        routed = Routed()
        for stage, outcome in zip(stages, outcomes, strict=True):
            self._guarded(routed, ctx, stage, outcome, doc, None)
        return routed

    def route_graph(
        self,
        msg: ConsumerRecord[bytes, bytes],
        doc: dict[str, Any],
        runs: Sequence[StageRun],
        stages: Mapping[str, RoutedStage],
    ) -> Routed:
        """The publications of every run of a stage graph (``runs`` upstream first)."""
        ctx = _Context(msg, doc, self.id_field)
        routed = Routed()
        parents: dict[int, dict[str, str]] = {}  # id(run) -> the parent ref it was given
        refs: dict[tuple[int, int], dict[str, str]] = {}  # (id(run), output) -> ref to it
        for run in runs:
            outcome = run.outcome
            if outcome is None:
                routed.skipped.append(run.stage)
                continue
            parent = None
            upstream, index = run.parent, run.parent_index
            if upstream is not None and index is not None:
                parent = refs.get((id(upstream), index))
                if parent is None:
                    parent = self._parent_ref(ctx, upstream, index, stages, parents)
                    refs[(id(upstream), index)] = parent
                parents[id(run)] = parent
            self._guarded(routed, ctx, stages[run.stage], outcome, run.row, parent)
        return routed

    def _parent_ref(
        self,
        ctx: _Context,
        upstream: StageRun,
        index: int,
        stages: Mapping[str, RoutedStage],
        parents: dict[int, dict[str, str]],
    ) -> dict[str, str]:
        """``{"stage", "id"}`` of the upstream output a chained run read (the id it was
        published with: same arguments as its ``build_output``)."""
        assert upstream.outcome is not None  # it ran, since it has readers
        outputs = upstream.outcome.outputs
        stage = stages[upstream.stage]
        segment = _segment(stage, outputs[index].data, index, len(outputs))
        grand = parents.get(id(upstream))
        ident = output_id_of(
            outputs[index],
            stage=stage.name,
            source=ctx.source,
            segment=segment,
            doc_id=ctx.doc_id,
            prompt_sha256=_prompt_sha256(stage),
            parent=grand,
        )
        return {"stage": stage.name, "id": ident}

    def _guarded(
        self,
        routed: Routed,
        ctx: _Context,
        stage: RoutedStage,
        outcome: RecordOutcome,
        row: Mapping[str, Any],
        parent: dict[str, str] | None,
    ) -> None:
        try:
            self._stage(routed, ctx, stage, outcome, row, parent)
        except Exception as exc:  # building the output failed: this stage's DLQ
            failure = Failure.from_exception(exc, stage=stage.name)
            routed.failures.append(failure)
            routed.publications.append(self._branch_letter(ctx.msg, failure, parent))

    def _branch_letter(
        self,
        msg: ConsumerRecord[bytes, bytes],
        failure: Failure,
        parent: Mapping[str, str] | None,
    ) -> Publication:
        pub = self.dead_letter(msg, failure)
        if parent is not None:
            # Several branches of one record may fail in one stage: say which one this is.
            pub.out.headers = [
                *(pub.out.headers or []),
                (PARENT_STAGE_HEADER, parent["stage"].encode()),
                (PARENT_ID_HEADER, parent["id"].encode()),
            ]
        return pub

    def _stage(
        self,
        routed: Routed,
        ctx: _Context,
        stage: RoutedStage,
        outcome: RecordOutcome,
        doc: Mapping[str, Any],
        parent: dict[str, str] | None,
    ) -> None:
        msg, key, source = ctx.msg, ctx.key, ctx.source
        truncated = 0
        for call in outcome.calls:  # a loop: no generator per record
            if call.finish_reason == "length":
                truncated += 1
        if truncated:  # counted before the verdict: kept, filtered and dead-lettered alike
            routed.truncated.append((stage.name, truncated))
        if outcome.error is not None:
            failure = Failure.from_exception(outcome.error, stage=stage.name)
            routed.failures.append(failure)
            routed.publications.append(self._branch_letter(msg, failure, parent))
            return
        if outcome.calls:
            routed.llm_answered = True
        reason = outcome.filtered
        if reason is None and not outcome.outputs:
            reason = NO_OUTPUT
        if reason is not None:
            routed.filtered.append((stage.name, reason))
            if self.filtered_topic is not None:
                value = build_filtered(doc, stage=stage.name, reason=reason, source=source)
                out = OutMessage(self.filtered_topic, value, key)
                routed.publications.append(Publication(out, "filtered", stage.name))
            return
        outputs = outcome.outputs
        prompt_sha256 = _prompt_sha256(stage)
        for i, output in enumerate(outputs):
            value = build_output(
                output,
                stage=stage.name,
                source=source,
                segment=_segment(stage, output.data, i, len(outputs)),
                doc_id=ctx.doc_id,
                prompt_sha256=prompt_sha256,
                parent=parent,
            )
            out = OutMessage(stage.topic, value, key)
            routed.publications.append(Publication(out, "output", stage.name))


class _Context:
    """What every publication of one input record shares."""

    __slots__ = ("doc_id", "key", "msg", "source")

    def __init__(
        self, msg: ConsumerRecord[bytes, bytes], doc: Mapping[str, Any], id_field: str
    ) -> None:
        self.msg = msg
        self.key = output_key(msg.key, doc, id_field)
        self.doc_id = document_id(doc, id_field)
        self.source = source_meta(msg.topic, msg.partition, msg.offset)


def _segment(stage: RoutedStage, data: Mapping[str, Any], index: int, count: int) -> int | None:
    """The segment number of output ``index`` of ``count`` (None for a one-row stage)."""
    if stage.segmented or count > 1:
        value = data.get("segment_index", index)
        return value if isinstance(value, int) else index
    return None


def _prompt_sha256(stage: RoutedStage) -> str | None:
    value = getattr(stage, "prompt_sha256", None)
    return value if isinstance(value, str) else None


def without_value(pub: Publication) -> Publication:
    """The dead letter again, its value left out (the broker refused even the original)."""
    headers = [*(pub.out.headers or []), (VALUE_OMITTED_HEADER, b"true")]
    out = OutMessage(pub.out.topic, None, pub.out.key, headers)
    return Publication(out, "dlq", pub.stage, pub.reason)
