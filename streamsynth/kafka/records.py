"""Input decoding and validation, output record building, key choice.

An input value becomes a ``dict`` or a :class:`BadRecord` with a typed reason;
nothing here raises on bad input. The size check runs on the raw bytes, before
any decoding: a 10 MB value is rejected without being parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from streamsynth.engine.stage import Output

#: The reasons a record is rejected before any stage sees it.
NOT_UTF8: Final = "not_utf8"
NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
MISSING_TEXT: Final = "missing_text"
EMPTY_TEXT: Final = "empty_text"
TOO_LARGE: Final = "too_large"
TEXT_NOT_STRING: Final = "text_not_string"
BAD_RECORD_REASONS: Final = (
    NOT_UTF8,
    NOT_JSON,
    NOT_OBJECT,
    MISSING_TEXT,
    EMPTY_TEXT,
    TOO_LARGE,
    TEXT_NOT_STRING,
)

#: The field of every output record that holds streamsynth's own metadata.
META_FIELD: Final = "streamsynth"


@dataclass(frozen=True, slots=True)
class BadRecord:
    """Why an input value cannot be processed. ``reason`` is one of BAD_RECORD_REASONS."""

    reason: str
    message: str

    @property
    def error_class(self) -> str:
        return f"BadRecord.{self.reason}"


def decode_value(
    value: bytes | None, *, text_field: str, max_bytes: int
) -> dict[str, Any] | BadRecord:
    """The JSON object in ``value``, or why it is unusable."""
    if value is None:
        return BadRecord(NOT_JSON, "the record value is null (a tombstone)")
    size = len(value)
    if size > max_bytes:
        return BadRecord(TOO_LARGE, f"the value is {size} bytes; the limit is {max_bytes}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        # orjson rejects invalid UTF-8 too; tell the two apart only on this cold path.
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadRecord(NOT_UTF8, f"the value is not UTF-8 (byte {exc.start})")
        return BadRecord(NOT_JSON, "the value is not JSON")
    if type(doc) is not dict:
        return BadRecord(NOT_OBJECT, f"the value is a JSON {type(doc).__name__}, not an object")
    text = doc.get(text_field, _MISSING)
    if text is _MISSING or text is None:
        return BadRecord(MISSING_TEXT, f"the object has no {text_field!r} field")
    if type(text) is not str:
        return BadRecord(
            TEXT_NOT_STRING, f"field {text_field!r} is a {type(text).__name__}, not a string"
        )
    if not text.strip():
        return BadRecord(EMPTY_TEXT, f"field {text_field!r} is empty")
    return doc


_MISSING: Final = object()


def output_key(key: bytes | None, doc: Mapping[str, Any] | None, id_field: str) -> bytes | None:
    """The input key; else the document id (so outputs of one document share a partition)."""
    if key is not None:
        return key
    if doc is not None:
        ident = doc.get(id_field)
        if ident is not None:
            return (ident if isinstance(ident, str) else orjson.dumps(ident).decode()).encode()
    return None


def source_meta(topic: str, partition: int, offset: int) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "offset": offset}


def build_output(
    output: Output,
    *,
    stage: str,
    source: dict[str, Any],
    segment: int | None = None,
) -> bytes:
    """The JSON value of one output record: the stage's row plus a ``streamsynth`` object.

    A stage's row is the input object with the stage's output field added.
    ``segment`` is set for tasks whose unit is a segment (one record per kept segment).
    """
    calls = output.calls
    if len(calls) == 1:
        # The common case (one request per output): read the call, skip the aggregates.
        call = calls[0]
        meta: dict[str, Any] = {
            "stage": stage,
            "model": call.model,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "finish_reason": call.finish_reason,
            "latency_s": round(call.latency_s, 6),
            "attempts": call.attempts,
            "source": source,
        }
    else:
        meta = {
            "stage": stage,
            "model": output.model,
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens,
            "finish_reason": output.finish_reason,
            "latency_s": round(output.latency_s, 6),
            "attempts": output.attempts,
            "source": source,
        }
    if segment is not None:
        meta["segment"] = segment
    data = output.data
    if META_FIELD in data:
        # Never mutate the stage's row: it may be shared with other stages' outputs.
        data = dict(data)
    data[META_FIELD] = meta
    try:
        return orjson.dumps(data)
    finally:
        if data is output.data:
            del data[META_FIELD]


def build_filtered(
    doc: Mapping[str, Any], *, stage: str, reason: str, source: dict[str, Any]
) -> bytes:
    """The value published to the optional filtered topic: the input plus why it was dropped."""
    data = dict(doc)
    data[META_FIELD] = {"stage": stage, "filtered": reason, "source": source}
    return orjson.dumps(data)
