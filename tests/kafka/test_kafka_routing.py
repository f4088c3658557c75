"""Decoded record + stage outcomes -> publications (kafka/routing.py), without a broker."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiokafka import ConsumerRecord

from streamsynth.engine.stage import LLMCall, Output, RecordOutcome
from streamsynth.kafka.dlq import header_map
from streamsynth.kafka.routing import NO_OUTPUT, Router, without_value


@dataclass
class _Stage:
    name: str
    topic: str
    segmented: bool = False


MSG: ConsumerRecord[bytes, bytes] = ConsumerRecord(
    "in", 3, 42, 0, 0, b"key-1", b'{"id": "d1", "text": "t"}', None, 5, 25, []
)  # fmt: skip
DOC = {"id": "d1", "text": "t"}


def _router(filtered: str | None = "filtered") -> Router:
    return Router(dlq_topic="dlq", filtered_topic=filtered, id_field="id")


def _call() -> LLMCall:
    return LLMCall("m", prompt_tokens=3, completion_tokens=2, finish_reason="stop",
                   latency_s=0.1, attempts=1)  # fmt: skip


def test_each_outcome_becomes_its_messages() -> None:
    stages = [_Stage("a", "out.a"), _Stage("b", "out.b", segmented=True), _Stage("c", "out.c"),
              _Stage("d", "out.d")]  # fmt: skip
    outcomes = [
        RecordOutcome(outputs=[Output({**DOC, "a": "x"}, [_call()])]),
        RecordOutcome(outputs=[Output({**DOC, "b": "y", "segment_index": 2}, [_call()])]),
        RecordOutcome(filtered="too_short", calls=[_call()]),
        RecordOutcome(error=ValueError("boom")),
    ]
    routed = _router().route(MSG, DOC, stages, outcomes)
    kinds = [(p.kind, p.stage, p.out.topic) for p in routed.publications]
    assert kinds == [("output", "a", "out.a"), ("output", "b", "out.b"),
                     ("filtered", "c", "filtered"), ("dlq", "d", "dlq")]  # fmt: skip
    a, b, c, d = routed.publications
    assert a.out.key == b"key-1"
    meta_a = orjson.loads(a.out.value or b"")["streamsynth"]
    assert meta_a["source"] == {"topic": "in", "partition": 3, "offset": 42}
    assert "segment" not in meta_a
    assert orjson.loads(b.out.value or b"")["streamsynth"]["segment"] == 2
    assert orjson.loads(c.out.value or b"")["streamsynth"]["filtered"] == "too_short"
    assert (
        d.out.value == MSG.value
        and header_map(d.out.headers or [])["streamsynth.error.stage"] == "d"
    )
    assert routed.filtered == [("c", "too_short")]
    assert [f.stage for f in routed.failures] == ["d"]
    assert routed.llm_answered


def test_no_output_is_filtered_and_counted_even_without_a_filtered_topic() -> None:
    routed = _router(filtered=None).route(MSG, DOC, [_Stage("a", "o")], [RecordOutcome()])
    assert routed.publications == []
    assert routed.filtered == [("a", NO_OUTPUT)]
    assert not routed.llm_answered


def test_an_output_that_cannot_be_built_dead_letters_that_stage_only() -> None:
    unserializable = Output({**DOC, "a": {1, 2}}, [_call()])  # a set is not JSON
    stages = [_Stage("a", "out.a"), _Stage("b", "out.b")]
    outcomes = [RecordOutcome(outputs=[unserializable]), RecordOutcome(outputs=[Output(DOC)])]
    routed = _router().route(MSG, DOC, stages, outcomes)
    assert [(p.kind, p.stage) for p in routed.publications] == [("dlq", "a"), ("output", "b")]
    assert routed.failures[0].error_class == "TypeError"


def test_a_dead_letter_without_its_value_keeps_key_and_headers() -> None:
    failure_pub = _router().route(MSG, DOC, [_Stage("a", "o")], [RecordOutcome(error=OSError())])
    pub = failure_pub.publications[0]
    slim = without_value(pub)
    assert slim.out.value is None and slim.out.key == b"key-1" and slim.kind == "dlq"
    headers = header_map(slim.out.headers or [])
    assert headers["streamsynth.error.value_omitted"] == "true"
    assert headers["streamsynth.error.stage"] == "a"
