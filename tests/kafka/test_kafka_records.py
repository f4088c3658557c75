"""Input validation, output records, keys and dead-letter headers."""

from __future__ import annotations

import orjson
import pytest

from streamsynth.engine.errors import PostProcessingError
from streamsynth.engine.stage import LLMCall, Output
from streamsynth.kafka.dlq import (
    DECODE_STAGE,
    HEADER_PREFIX,
    MAX_MESSAGE_CHARS,
    Failure,
    dlq_headers,
    header_map,
    scrub,
)
from streamsynth.kafka.records import (
    EMPTY_TEXT,
    MISSING_TEXT,
    NOT_JSON,
    NOT_OBJECT,
    NOT_UTF8,
    TEXT_NOT_STRING,
    TOO_LARGE,
    BadRecord,
    build_filtered,
    build_output,
    decode_value,
    output_key,
    source_meta,
)
from streamsynth.llm.errors import RateLimitError, status_error


def decode(value: bytes | None, max_bytes: int = 1024) -> dict[str, object] | BadRecord:
    return decode_value(value, text_field="text", max_bytes=max_bytes)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe\x00garbage", NOT_UTF8),
        (b"not json at all", NOT_JSON),
        (None, NOT_JSON),
        (b"[1, 2]", NOT_OBJECT),
        (b'"a string"', NOT_OBJECT),
        (b'{"id": 1}', MISSING_TEXT),
        (b'{"text": null}', MISSING_TEXT),
        (b'{"text": ""}', EMPTY_TEXT),
        (b'{"text": "   \\n"}', EMPTY_TEXT),
        (b'{"text": 42}', TEXT_NOT_STRING),
        (b'{"text": ["a"]}', TEXT_NOT_STRING),
    ],
)
def test_bad_inputs_have_typed_reasons(value: bytes | None, reason: str) -> None:
    result = decode(value)
    assert isinstance(result, BadRecord)
    assert result.reason == reason
    assert result.error_class == f"BadRecord.{reason}"


def test_size_is_checked_before_decoding() -> None:
    # Invalid UTF-8 *and* too large: the size check wins, so nothing was decoded.
    big = b"\xff" * 2048
    result = decode(big, max_bytes=1024)
    assert isinstance(result, BadRecord) and result.reason == TOO_LARGE
    assert "2048" in result.message


def test_a_good_record_decodes_to_its_object() -> None:
    value = orjson.dumps({"id": "a", "text": "héllo", "meta": {"x": 1}})
    assert decode(value) == {"id": "a", "text": "héllo", "meta": {"x": 1}}


def test_key_is_input_key_else_id_else_none() -> None:
    assert output_key(b"k", {"id": "x"}, "id") == b"k"
    assert output_key(None, {"id": "x"}, "id") == b"x"
    assert output_key(None, {"id": 17}, "id") == b"17"
    assert output_key(None, {"text": "t"}, "id") is None


def test_output_record_is_input_plus_field_plus_meta() -> None:
    call = LLMCall(
        "m", prompt_tokens=11, completion_tokens=7, finish_reason="stop", latency_s=0.25, attempts=2
    )
    data = {"id": "a", "text": "t", "summary": "s"}
    out = Output(data, [call])
    value = build_output(out, stage="summary", source=source_meta("in", 3, 42))
    body = orjson.loads(value)
    assert body["summary"] == "s" and body["text"] == "t" and body["id"] == "a"
    meta = body["streamsynth"]
    lineage = ("output_id", "prompt_sha256", "generation", "endpoint", "cached", "cached_tokens")
    for key in (*lineage, "produced_at", "version"):
        assert key in meta  # tested in test_output_lineage.py
        del meta[key]
    assert meta == {
        "stage": "summary",
        "model": "m",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "finish_reason": "stop",
        "latency_s": 0.25,
        "attempts": 2,
        "source": {"topic": "in", "partition": 3, "offset": 42},
    }
    assert "streamsynth" not in data  # the stage's row is left as it was
    seg = orjson.loads(build_output(out, stage="qa", source={}, segment=2))
    assert seg["streamsynth"]["segment"] == 2


def test_filtered_record_says_why() -> None:
    body = orjson.loads(
        build_filtered(
            {"id": "a", "text": "t"}, stage="qa", reason="too_short", source=source_meta("in", 0, 1)
        )
    )
    assert body["streamsynth"]["filtered"] == "too_short"
    assert body["text"] == "t"


def test_dlq_headers_follow_kip_1034() -> None:
    failure = Failure.from_bad_record(BadRecord(TOO_LARGE, "too big"))
    headers = header_map(dlq_headers(failure, topic="in", partition=2, offset=99))
    assert headers == {
        HEADER_PREFIX + "class": "BadRecord.too_large",
        HEADER_PREFIX + "reason": "too_large",
        HEADER_PREFIX + "message": "too big",
        HEADER_PREFIX + "stage": DECODE_STAGE,
        HEADER_PREFIX + "topic": "in",
        HEADER_PREFIX + "partition": "2",
        HEADER_PREFIX + "offset": "99",
        HEADER_PREFIX + "attempts": "0",
    }


def test_llm_failure_header_has_class_reason_and_attempts() -> None:
    exc = status_error(429, "slow down")
    exc.attempts = 6
    assert isinstance(exc, RateLimitError)
    failure = Failure.from_exception(exc, stage="qa")
    headers = header_map(dlq_headers(failure, topic="in", partition=0, offset=1))
    assert headers[HEADER_PREFIX + "class"] == "RateLimitError"
    assert headers[HEADER_PREFIX + "reason"] == "http_429"
    assert headers[HEADER_PREFIX + "attempts"] == "6"
    assert headers[HEADER_PREFIX + "stage"] == "qa"
    post = Failure.from_exception(PostProcessingError("bad answer"), stage="qa")
    assert post.reason == "postprocess"
    assert Failure.from_exception(ValueError("x"), stage="qa").reason == "ValueError"


@pytest.mark.parametrize(
    "secret",
    [
        "sk-abcdefghijklmnopqrstuvwx",
        "Bearer abcdefghijklmnop",
        "api_key=hunter2hunter2",
        "https://user:p4ssw0rd@llm.example.com/v1",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "a" * 64,
    ],
)
def test_messages_are_scrubbed_of_secrets(secret: str) -> None:
    text = scrub(f"request failed: {secret} (retry later)")
    core = secret.split("=")[-1].split("//")[-1].split("@")[0].removeprefix("Bearer ")
    assert core not in text
    assert "[REDACTED]" in text


def test_messages_are_bounded() -> None:
    text = scrub("x " * 100_000)
    assert len(text) <= MAX_MESSAGE_CHARS
    assert text.endswith("...")


def test_output_of_several_calls_sums_them() -> None:
    calls = [
        LLMCall("m", 10, 5, "stop", 0.5, 1),
        LLMCall("m", 20, 7, "length", 0.25, 3),
    ]
    body = orjson.loads(build_output(Output({"id": "a"}, calls), stage="qa", source={}))
    meta = body["streamsynth"]
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["attempts"]) == (30, 12, 4)
    assert meta["finish_reason"] == "length" and meta["latency_s"] == 0.5
