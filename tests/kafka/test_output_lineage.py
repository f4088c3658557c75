"""Output lineage: output_id, prompt digest, parameters sent, endpoint, schema."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import jsonschema
import orjson
import pytest

import streamsynth
from streamsynth.engine.stage import LLMCall, Output
from streamsynth.kafka import records
from streamsynth.kafka.records import (
    build_output,
    document_id,
    output_id_of,
    output_schema,
    public_endpoint,
    source_meta,
    validate_output,
)
from streamsynth.llm.transports.wire import completion_result
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Usage
from streamsynth.stages.synthetic import SyntheticStage, call_of

SOURCE = source_meta("docs", 2, 40)


def call(**changes: Any) -> LLMCall:
    fields: dict[str, Any] = {
        "model": "served-model-2024",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "finish_reason": "stop",
        "latency_s": 0.1,
        "attempts": 1,
        "request_model": "m",
        "generation": {"temperature": 0.0, "max_tokens": 64, "n": 1},
        "endpoint": "http://127.0.0.1:8000/v1",
        "cached_tokens": None,
    }
    fields.update(changes)
    return LLMCall(**fields)


def meta(output: Output, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "stage": "s",
        "source": SOURCE,
        "doc_id": "d1",
        "prompt_sha256": "a" * 64,
    }
    args.update(kwargs)
    value = build_output(output, **args)
    validate_output(value)
    body: dict[str, Any] = orjson.loads(value)["streamsynth"]
    return body


def test_output_id_is_stable_and_changes_with_what_made_the_output() -> None:
    base = meta(Output({"id": "d1"}, [call()]))
    again = meta(Output({"id": "d1"}, [call(latency_s=9.0, attempts=3, endpoint="http://x:1/v1")]))
    assert base["output_id"] == again["output_id"]  # how it went does not matter
    assert base["produced_at"] != "" and base["version"] == streamsynth.__version__
    changed = [
        meta(Output({}, [call()]), doc_id="d2"),
        meta(Output({}, [call()]), stage="other"),
        meta(Output({}, [call()]), prompt_sha256="b" * 64),
        meta(Output({}, [call(request_model="m2")])),
        meta(Output({}, [call(generation={"temperature": 0.7, "max_tokens": 64, "n": 1})])),
        meta(Output({}, [call()]), segment=1),
        meta(Output({}, [call()]), parent={"stage": "up", "id": "c" * 64}),
    ]
    ids = {m["output_id"] for m in changed}
    assert len(ids) == len(changed) and base["output_id"] not in ids
    assert changed[-1]["parent"] == {"stage": "up", "id": "c" * 64}


def test_without_a_document_id_the_source_coordinates_name_the_document() -> None:
    one = meta(Output({}, [call()]), doc_id=None)
    same = meta(Output({}, [call()]), doc_id=None)
    other = meta(Output({}, [call()]), doc_id=None, source=source_meta("docs", 2, 41))
    assert one["output_id"] == same["output_id"] != other["output_id"]
    assert document_id({"id": 7}, "id") == "7" and document_id({"x": 1}, "id") is None


def test_output_id_of_matches_build_output() -> None:
    output = Output({}, [call()])
    got = meta(output, segment=3)["output_id"]
    assert got == output_id_of(
        output, stage="s", source=SOURCE, segment=3, doc_id="d1", prompt_sha256="a" * 64
    )


def test_lineage_fields_say_what_was_sent_and_where() -> None:
    m = meta(Output({}, [call(cached_tokens=8)]))
    assert m["generation"] == {"temperature": 0.0, "max_tokens": 64, "n": 1}
    assert m["endpoint"] == "http://127.0.0.1:8000/v1"
    assert m["cached"] is False and m["cached_tokens"] == 8
    assert m["model"] == "served-model-2024"  # what the server says answered
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["produced_at"])
    hit = meta(Output({}, [call(cached=True, endpoint=None, attempts=0)]))
    assert hit["cached"] is True and hit["endpoint"] is None
    assert public_endpoint("https://user:secret@llm.example:8443/v1/?key=abc") == (
        "https://llm.example:8443/v1"
    )


def test_prompt_sha256_covers_system_prompt_and_template() -> None:
    class Client:
        async def chat(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def aclose(self) -> None:
            return None

    def digest(**kwargs: Any) -> str:
        args: dict[str, Any] = {"prompt": "A {document}", "client": Client(), "model_name": "m"}
        args.update(kwargs)
        return SyntheticStage(**args).prompt_sha256()

    base = digest()
    assert re.fullmatch(r"[0-9a-f]{64}", base) and base == digest(model_name="other")
    assert len({base, digest(prompt="B {document}"), digest(system_prompt="Be brief.")}) == 3


def test_call_of_records_the_request_actually_sent() -> None:
    request = ChatRequest("m", ({"role": "user", "content": "x"},), GenerationConfig(seed=3))
    result = ChatResult(["a"], ["stop"], Usage(1, 1, cached_tokens=4), "m-served", endpoint="u")
    result.request = request
    recorded = call_of(result)
    assert recorded.request_model == "m" and recorded.cached_tokens == 4
    assert recorded.generation == request.config.request_fields()


def test_server_cached_tokens_are_read_from_usage_details() -> None:
    request = ChatRequest("m", ({"role": "user", "content": "x"},))
    body = {
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "a"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
    result = completion_result(orjson.dumps(body), {}, request, endpoint="u", latency_s=0.0)
    assert result.usage.cached_tokens == 8
    del body["usage"]["prompt_tokens_details"]  # type: ignore[attr-defined]
    plain = completion_result(orjson.dumps(body), {}, request, endpoint="u", latency_s=0.0)
    assert plain.usage.cached_tokens is None


def test_the_schema_rejects_records_without_lineage() -> None:
    jsonschema.validators.validator_for(output_schema()).check_schema(output_schema())
    good = orjson.loads(build_output(Output({"id": "x"}, [call()]), stage="s", source=SOURCE))
    validate_output(good)
    for field in ("output_id", "produced_at", "version", "generation"):
        bad = orjson.loads(orjson.dumps(good))
        del bad["streamsynth"][field]
        with pytest.raises(jsonschema.ValidationError):
            validate_output(bad)
    bad = orjson.loads(orjson.dumps(good))
    bad["streamsynth"]["endpoint"] = "http://user:pw@host/v1"
    with pytest.raises(jsonschema.ValidationError):
        validate_output(bad)


def test_routing_counts_truncated_answers_whatever_became_of_them() -> None:
    from dataclasses import dataclass

    from aiokafka import ConsumerRecord

    from streamsynth.engine.errors import TruncatedOutputError
    from streamsynth.engine.stage import RecordOutcome
    from streamsynth.kafka.routing import Router

    @dataclass
    class Stage:
        name: str
        topic: str
        segmented: bool = False
        prompt_sha256: str | None = None

    msg: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "in", 0, 7, 0, 0, b"d1", b'{"id": "d1", "text": "t"}', None, 2, 25, []
    )
    cut = call(finish_reason="length")
    outcomes = [
        RecordOutcome(outputs=[Output({"id": "d1"}, [cut, cut])], calls=[cut, cut]),  # kept
        RecordOutcome(filtered="truncated", calls=[cut]),  # on_truncated: filter
        RecordOutcome(error=TruncatedOutputError("cut", attempts=1, call=cut), calls=[cut]),
        RecordOutcome(outputs=[Output({"id": "d1"}, [call()])], calls=[call()]),  # not cut
    ]
    stages = [Stage(n, f"out.{n}") for n in "abcd"]
    routed = Router(dlq_topic="dlq", filtered_topic=None, id_field="id").route(
        msg, {"id": "d1", "text": "t"}, stages, outcomes
    )
    assert routed.truncated == [("a", 2), ("b", 1), ("c", 1)]
    assert [f.reason for f in routed.failures] == ["truncated"]


def test_output_id_is_the_sha256_of_its_documented_material() -> None:
    """Pinned, so that a faster path can never change an id consumers join on."""
    gen = {"temperature": 0.0, "max_tokens": 64, "n": 1}
    sort = orjson.OPT_SORT_KEYS
    stage_part = orjson.dumps(["s", "a" * 64, "m", gen], option=sort)
    parent = {"stage": "up", "id": "b" * 64}
    cases: list[tuple[str | None, int | None, dict[str, str] | None]] = [
        ("d1", None, None),
        ('dé"1', None, None),  # escaped and non-ASCII ids
        ("d1", 3, None),
        ("d1", None, parent),
        (None, None, None),
        (None, 2, parent),
    ]
    for doc_id, segment, par in cases:
        document = {"id": doc_id} if doc_id is not None else {"source": SOURCE}
        material = stage_part + orjson.dumps([document, segment, par], option=sort)
        out = Output({"x": 1}, [call(generation=gen)])
        got = output_id_of(
            out,
            stage="s",
            source=SOURCE,
            segment=segment,
            doc_id=doc_id,
            prompt_sha256="a" * 64,
            parent=par,
        )
        assert got == hashlib.sha256(material).hexdigest(), (doc_id, segment, par)
        assert meta(out, doc_id=doc_id, segment=segment, parent=par)["output_id"] == got


def test_output_bytes_are_the_row_with_its_meta_object_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build_output splices a stage's shared keys in: the bytes stay orjson's of the dict."""
    monkeypatch.setattr(records, "produced_at", lambda: "2026-12-01T12:00:00.123Z")
    gen = {"temperature": 0.0, "max_tokens": 64, "n": 1}
    rows: list[dict[str, Any]] = [
        {"id": "d1", "text": "t", "s": "answer"},
        {},
        {"streamsynth": "the input had one", "id": 7},  # keeps its place, replaced
        {"id": "é", "nested": {"a": [1, 2.5, None]}},
    ]
    outputs = [
        Output(rows[0], [call(generation=gen)]),
        Output(rows[1], []),
        Output(rows[2], [call(generation=gen), call(generation=gen, cached=True, endpoint=None)]),
        Output(rows[3], [call(generation=gen, endpoint="https://u:p@h:9/v1/?k=1")]),
    ]
    variants: list[dict[str, Any]] = [
        {},
        {"segment": 4},
        {"parent": {"stage": "up", "id": "b" * 64}},
        {"doc_id": None, "prompt_sha256": None},
    ]
    for out in outputs:
        for extra in variants:
            args: dict[str, Any] = {
                "stage": "s",
                "source": SOURCE,
                "doc_id": "d1",
                "prompt_sha256": "a" * 64,
                **extra,
            }
            row = dict(out.data)
            row["streamsynth"] = records.output_meta(out, **args)
            before = dict(out.data)
            assert build_output(out, **args) == orjson.dumps(row), (out.data, extra)
            assert out.data == before  # the stage's row is left as it was
    first = orjson.loads(build_output(outputs[0], stage="s", source=SOURCE, doc_id="d1"))
    assert list(first["streamsynth"]) == [
        "stage", "model", "prompt_tokens", "completion_tokens", "finish_reason", "latency_s",
        "attempts", "source", "cached", "cached_tokens", "output_id", "prompt_sha256",
        "generation", "endpoint", "produced_at", "version",
    ]  # fmt: skip
