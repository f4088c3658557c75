"""A decoded record and its stages' outcomes -> the messages to publish.

For each stage, in config order:

* an error -> the record's dead letter (original key and value, KIP-1034 headers);
* a filter reason, or no output at all -> a copy on the filtered topic, if one is
  configured (counted either way);
* outputs -> one message per output on the stage's topic (one per segment for
  segment-unit tasks), keyed like the input.

Building a stage's messages can itself fail (an output that cannot be serialized):
that stage's record is dead-lettered instead. Nothing here logs, counts or sends:
:class:`Routed` tells the worker what to count and log, so routing stays a pure
function of its inputs (above ``records`` and ``dlq``, below the worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from streamsynth.kafka.dlq import Failure, dlq_headers
from streamsynth.kafka.records import build_filtered, build_output, output_key, source_meta
from streamsynth.kafka.sink import OutMessage

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    from streamsynth.engine.stage import RecordOutcome

#: Stage name in the DLQ headers for a failure outside any stage (a bug in the worker).
WORKER_STAGE = "worker"
#: Reason for a stage that returned neither outputs, a filter reason nor an error.
NO_OUTPUT = "no_output"
#: Header added when even the original value is too large for the DLQ.
VALUE_OMITTED_HEADER = "streamsynth.error.value_omitted"

PublicationKind = Literal["output", "dlq", "filtered"]


class RoutedStage(Protocol):
    """What routing needs to know of a stage."""

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


@dataclass(slots=True)
class Routed:
    """The publications of one record, and what the worker should count and log."""

    publications: list[Publication] = field(default_factory=list)
    #: Records dead-lettered, for the log (the DLQ metric counts acknowledgements).
    failures: list[Failure] = field(default_factory=list)
    #: (stage, reason) of every filtered stage, published or not.
    filtered: list[tuple[str, str]] = field(default_factory=list)
    #: Some stage got an answer from the LLM (readiness evidence).
    llm_answered: bool = False


class Router:
    """Builds publications for the configured topics and record fields."""

    __slots__ = ("dlq_topic", "filtered_topic", "id_field")

    def __init__(self, *, dlq_topic: str, filtered_topic: str | None, id_field: str) -> None:
        self.dlq_topic = dlq_topic
        self.filtered_topic = filtered_topic
        self.id_field = id_field

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
        key = output_key(msg.key, doc, self.id_field)
        source = source_meta(msg.topic, msg.partition, msg.offset)
        routed = Routed()
        for stage, outcome in zip(stages, outcomes, strict=True):
            try:
                self._stage(routed, msg, stage, outcome, doc, key, source)
            except Exception as exc:  # building the output failed: this stage's DLQ
                failure = Failure.from_exception(exc, stage=stage.name)
                routed.failures.append(failure)
                routed.publications.append(self.dead_letter(msg, failure))
        return routed

    def _stage(
        self,
        routed: Routed,
        msg: ConsumerRecord[bytes, bytes],
        stage: RoutedStage,
        outcome: RecordOutcome,
        doc: dict[str, Any],
        key: bytes | None,
        source: dict[str, Any],
    ) -> None:
        if outcome.error is not None:
            failure = Failure.from_exception(outcome.error, stage=stage.name)
            routed.failures.append(failure)
            routed.publications.append(self.dead_letter(msg, failure))
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
        segmented = stage.segmented or len(outputs) > 1
        for i, output in enumerate(outputs):
            segment = output.data.get("segment_index", i) if segmented else None
            value = build_output(output, stage=stage.name, source=source, segment=segment)
            out = OutMessage(stage.topic, value, key)
            routed.publications.append(Publication(out, "output", stage.name))


def without_value(pub: Publication) -> Publication:
    """The dead letter again, its value left out (the broker refused even the original)."""
    headers = [*(pub.out.headers or []), (VALUE_OMITTED_HEADER, b"true")]
    out = OutMessage(pub.out.topic, None, pub.out.key, headers)
    return Publication(out, "dlq", pub.stage, pub.reason)
