"""Input decoding and validation, output record building, key choice.

An input value becomes a ``dict`` or a :class:`BadRecord` with a typed reason;
nothing here raises on bad input. The size check runs on the raw bytes, before
any decoding: a 10 MB value is rejected without being parsed.

Every output carries lineage in its ``streamsynth`` object (the contract is the JSON
Schema in ``streamsynth/data/output.schema.json``; :func:`validate_output` checks a
record against it). Its ``output_id`` is a pure function of what made the output
(document, stage, prompt, model, parameters sent, segment), so the same document
processed twice, by any worker or consumer group, gets the same id: consumers
deduplicate and join on it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson

from streamsynth import __version__
from streamsynth.engine.stage import LLMCall, Output

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

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
    ident = document_id(doc, id_field)
    return ident.encode() if ident is not None else None


def document_id(doc: Mapping[str, Any] | None, id_field: str) -> str | None:
    """The document's id as text (JSON for a non-string id), or None when it has none."""
    if doc is None:
        return None
    ident = doc.get(id_field)
    if ident is None:
        return None
    return ident if isinstance(ident, str) else orjson.dumps(ident).decode()


def source_meta(topic: str, partition: int, offset: int) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "offset": offset}


def output_id(
    *,
    doc_id: str | None,
    source: Mapping[str, Any],
    stage: str,
    prompt_sha256: str | None,
    model: str | None,
    generation: Mapping[str, Any] | None,
    segment: int | None,
    parent: Mapping[str, str] | None = None,
) -> str:
    """The deterministic id of one output (see the module doc).

    A document without an id is named by its source coordinates, which are the same
    for every consumer of that topic. ``parent`` (a chained stage's upstream output,
    ``{"stage", "id"}``) tells apart the outputs made from each upstream row.
    """
    digest = _stage_digest(stage, prompt_sha256, model, generation).copy()
    if doc_id is not None and segment is None and parent is None:
        # The common case, the bytes orjson writes for [{"id": doc_id}, None, None].
        digest.update(b'[{"id":' + orjson.dumps(doc_id) + b"},null,null]")
    else:
        document = {"id": doc_id} if doc_id is not None else {"source": source}
        digest.update(orjson.dumps([document, segment, parent], option=orjson.OPT_SORT_KEYS))
    ident: str = digest.hexdigest()
    return ident


#: (stage, prompt digest, model, id(generation)) -> (generation, the SHA-256 state after
#: their bytes): every output of a stage shares that prefix of its id's material (the
#: stage hands out one parameters dict per config), so it is hashed once and copied.
_STAGE_MATERIAL: dict[tuple[str, str | None, str | None, int], tuple[Any, Any]] = {}
_STAGE_MATERIAL_MAX = 1024


def _stage_digest(
    stage: str, prompt_sha256: str | None, model: str | None, generation: Mapping[str, Any] | None
) -> Any:
    """The SHA-256 state after the part of an output_id's material that a whole stage shares
    (a ``hashlib`` object: copy it, never update it)."""
    key = (stage, prompt_sha256, model, id(generation))
    hit = _STAGE_MATERIAL.get(key)
    if hit is not None and hit[0] is generation:
        return hit[1]
    material = orjson.dumps([stage, prompt_sha256, model, generation], option=orjson.OPT_SORT_KEYS)
    if len(_STAGE_MATERIAL) >= _STAGE_MATERIAL_MAX:
        _STAGE_MATERIAL.clear()  # a new config per request (shrunk max_tokens): start over
    # The value holds ``generation`` itself, so its id cannot be reused while cached.
    digest = hashlib.sha256(material)
    _STAGE_MATERIAL[key] = (generation, digest)
    return digest


def output_id_of(
    output: Output,
    *,
    stage: str,
    source: Mapping[str, Any],
    segment: int | None = None,
    doc_id: str | None = None,
    prompt_sha256: str | None = None,
    parent: Mapping[str, str] | None = None,
) -> str:
    """The ``output_id`` that :func:`build_output` gives ``output`` (same arguments)."""
    model, generation, _ = _lineage(output.calls)
    return output_id(
        doc_id=doc_id,
        source=source,
        stage=stage,
        prompt_sha256=prompt_sha256,
        model=model,
        generation=generation,
        segment=segment,
        parent=parent,
    )


@lru_cache(maxsize=64)
def public_endpoint(url: str) -> str:
    """``url`` without user info, query or fragment: safe to publish (config rejects
    credentials in base URLs already; this holds even for a URL that bypassed it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text
_milli: list[Any] = [-1, ""]  # the last millisecond formatted, and its text


def produced_at() -> str:
    """Now, RFC 3339 in UTC with milliseconds (each millisecond's text is formatted once:
    at full speed a worker writes tens of outputs per millisecond)."""
    ms = int(time.time() * 1000)
    if ms == _milli[0]:
        text: str = _milli[1]
        return text
    whole, frac = divmod(ms, 1000)
    if whole != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = whole
    text = f"{_second[1]}.{frac:03d}Z"
    _milli[0], _milli[1] = ms, text
    return text


def _lineage(calls: list[LLMCall]) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(model asked for, parameters sent, endpoint) of an output's calls.

    All calls of one output share the stage's model and parameters (only the context
    guard may shrink one's max_tokens), so the first call stands for them; the last
    call's endpoint is the one that produced the final answer.
    """
    if not calls:
        return None, None, None
    first = calls[0]
    endpoint = calls[-1].endpoint
    return (
        first.request_model or first.model,
        first.generation,
        public_endpoint(endpoint) if endpoint else None,
    )


def _cached_tokens(calls: list[LLMCall]) -> int | None:
    known = [c.cached_tokens for c in calls if c.cached_tokens is not None]
    return sum(known) if known else None


def build_output(
    output: Output,
    *,
    stage: str,
    source: dict[str, Any],
    segment: int | None = None,
    doc_id: str | None = None,
    prompt_sha256: str | None = None,
    parent: Mapping[str, str] | None = None,
) -> bytes:
    """The JSON value of one output record: the stage's row plus a ``streamsynth`` object.

    A stage's row is the input object with the stage's output field added.
    ``segment`` is set for tasks whose unit is a segment (one record per kept segment).
    ``doc_id`` (see :func:`document_id`), the stage's ``prompt_sha256`` and, for a
    chained stage, ``parent`` (``{"stage", "id"}`` of the upstream output) enter the
    output's ``output_id``.

    The bytes are those of ``orjson.dumps`` of the row with the ``streamsynth`` object
    added last (:func:`output_meta` in its key order); the part of that object a stage
    shares (prompt digest, parameters, endpoint, version) is serialized once per stage
    and spliced in, which halves the cost of an output.
    """
    data = output.data
    if META_FIELD in data:
        # The row has the field already: it keeps its place (and never mutate the row,
        # it may be shared with other stages' outputs).
        row = dict(data)
        row[META_FIELD] = output_meta(
            output,
            stage=stage,
            source=source,
            segment=segment,
            doc_id=doc_id,
            prompt_sha256=prompt_sha256,
            parent=parent,
        )
        return orjson.dumps(row)
    model, generation, endpoint = _lineage(output.calls)
    meta = _meta_to_id(output, stage, source, segment, doc_id, prompt_sha256, parent, model)
    head = orjson.dumps(data)
    middle, end = _shared_meta(prompt_sha256, generation, endpoint)
    return b"".join(
        (
            head[:-1],
            b',"streamsynth":' if len(head) > 2 else b'"streamsynth":',
            orjson.dumps(meta)[:-1],
            middle,
            produced_at().encode(),
            end,
        )
    )


def output_meta(
    output: Output,
    *,
    stage: str,
    source: dict[str, Any],
    segment: int | None = None,
    doc_id: str | None = None,
    prompt_sha256: str | None = None,
    parent: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``streamsynth`` object of an output, as a dict (same arguments as build_output)."""
    model, generation, endpoint = _lineage(output.calls)
    meta = _meta_to_id(output, stage, source, segment, doc_id, prompt_sha256, parent, model)
    meta["prompt_sha256"] = prompt_sha256
    meta["generation"] = generation
    meta["endpoint"] = endpoint
    meta["produced_at"] = produced_at()
    meta["version"] = __version__
    return meta


def _meta_to_id(
    output: Output,
    stage: str,
    source: dict[str, Any],
    segment: int | None,
    doc_id: str | None,
    prompt_sha256: str | None,
    parent: Mapping[str, str] | None,
    model: str | None,
) -> dict[str, Any]:
    """The keys of the ``streamsynth`` object up to ``output_id`` and ``parent``."""
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
            "cached": call.cached,
            "cached_tokens": call.cached_tokens,
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
            "cached": bool(calls) and all(c.cached for c in calls),
            "cached_tokens": _cached_tokens(calls),
        }
    if segment is not None:
        meta["segment"] = segment
    meta["output_id"] = output_id(
        doc_id=doc_id,
        source=source,
        stage=stage,
        prompt_sha256=prompt_sha256,
        model=model,
        generation=calls[0].generation if calls else None,
        segment=segment,
        parent=parent,
    )
    if parent is not None:
        meta["parent"] = dict(parent)
    return meta


#: (prompt digest, id(parameters), endpoint) -> (parameters, the bytes from after
#: ``output_id``/``parent`` to ``produced_at``'s opening quote, the bytes after its value).
_SHARED_META: dict[tuple[str | None, int, str | None], tuple[Any, bytes, bytes]] = {}
_SHARED_META_MAX = 1024


def _shared_meta(
    prompt_sha256: str | None, generation: dict[str, Any] | None, endpoint: str | None
) -> tuple[bytes, bytes]:
    """The serialized keys of the ``streamsynth`` object that a stage's outputs share."""
    key = (prompt_sha256, id(generation), endpoint)
    hit = _SHARED_META.get(key)
    if hit is not None and hit[0] is generation:
        return hit[1], hit[2]
    shared = orjson.dumps(
        {"prompt_sha256": prompt_sha256, "generation": generation, "endpoint": endpoint}
    )
    middle = b"," + shared[1:-1] + b',"produced_at":"'
    end = b'","version":' + orjson.dumps(__version__) + b"}}"
    if len(_SHARED_META) >= _SHARED_META_MAX:
        _SHARED_META.clear()  # a new config per request (shrunk max_tokens): start over
    # The value holds ``generation`` itself, so its id cannot be reused while cached.
    _SHARED_META[key] = (generation, middle, end)
    return middle, end


def build_filtered(
    doc: Mapping[str, Any], *, stage: str, reason: str, source: dict[str, Any]
) -> bytes:
    """The value published to the optional filtered topic: the input plus why it was dropped."""
    data = dict(doc)
    data[META_FIELD] = {"stage": stage, "filtered": reason, "source": source}
    return orjson.dumps(data)


# -- the published output schema ------------------------------------------------------


@cache
def output_schema() -> dict[str, Any]:
    """The JSON Schema of an output record (``streamsynth/data/output.schema.json``)."""
    text = resources.files("streamsynth").joinpath("data/output.schema.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


@cache
def _output_validator() -> Validator:
    from jsonschema import validators  # imported on first use: the hot path never needs it

    schema = output_schema()
    cls = validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_output(value: bytes | Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``value`` is a valid output record."""
    record = orjson.loads(value) if isinstance(value, bytes | bytearray) else value
    _output_validator().validate(record)
