"""The odd answer shapes through a real worker: a real broker, ``streamsynth run``, and a
loopback server answering each document with the shape its text names.

No record is published with an empty text, and every dead letter has a typed reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamsynth.testing.harness import (
    TopicReader,
    Topics,
    WorkerProcess,
    custom_stage,
    doc,
    produce,
    worker_config,
)
from streamsynth.testing.stub import chat_stub

E = "streamsynth.error."
TOOL_CALL = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
#: Shape -> (message, usage): what the server answers to a document naming the shape.
SHAPES: dict[str, tuple[dict[str, Any], Any]] = {
    "plain": ({"content": "A fine summary."}, {"prompt_tokens": 5, "completion_tokens": 3}),
    "parts": (
        {"content": [{"type": "text", "text": "Joined "}, {"type": "text", "text": "parts."}]},
        {"prompt_tokens": 5, "completion_tokens": 3},
    ),
    "bad-usage": ({"content": "Kept despite usage."}, {"prompt_tokens": "many"}),
    "no-usage": ({"content": "Kept without usage."}, None),
    "null": ({"content": None}, {"prompt_tokens": 5, "completion_tokens": 0}),
    "tools": ({"content": None, "tool_calls": TOOL_CALL}, {"prompt_tokens": 5}),
    "blank": ({"content": "  \n "}, {"prompt_tokens": 5, "completion_tokens": 1}),
    "empty-parts": ({"content": []}, {"prompt_tokens": 5, "completion_tokens": 0}),
}
PUBLISHED = {
    "plain": "A fine summary.",
    "parts": "Joined parts.",
    "bad-usage": "Kept despite usage.",
    "no-usage": "Kept without usage.",
}
EMPTY = {"null", "tools", "blank", "empty-parts"}


async def _answer(request: web.Request) -> web.Response:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    shape = next(name for name in SHAPES if f"shape={name};" in prompt)
    message, usage = SHAPES[shape]
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
    payload: dict[str, Any] = {"object": "chat.completion", "model": "m", "choices": [choice]}
    if usage is not None:
        payload["usage"] = usage
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


@pytest.fixture
async def shapes_url() -> AsyncIterator[str]:
    async with chat_stub(_answer) as url:
        yield url


async def test_odd_answer_shapes_end_as_outputs_with_text_or_typed_dead_letters(
    kafka_bootstrap: str, shapes_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=2)
    out = topics.outputs["summary"]
    names = list(SHAPES)
    docs = [doc(i, f"shape={names[i % len(names)]}; document {i}") for i in range(2 * len(names))]
    await produce(kafka_bootstrap, topics.input, docs)
    cfg = worker_config(
        kafka_bootstrap, topics, shapes_url, [custom_stage("summary", out)], llm__max_attempts=2
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: len(r.ids(out)) + len(r.ids(topics.dlq)) >= len(docs), 90, "all"
            )
            await reader.settle(quiet_s=0.5)
    finally:
        worker.stop()
    shape_of = {f"doc-{i}": names[i % len(names)] for i in range(len(docs))}
    outputs = {row["id"]: row for row in reader.rows(out)}
    dead = {r.json()["id"]: r.headers for r in reader.records[topics.dlq]}
    assert set(outputs) | set(dead) == set(shape_of)
    for doc_id, row in outputs.items():
        assert shape_of[doc_id] in PUBLISHED, (doc_id, row)
        assert row["summary"] == PUBLISHED[shape_of[doc_id]]  # never empty, parts joined
    for doc_id, headers in dead.items():
        assert shape_of[doc_id] in EMPTY, (doc_id, headers)
        assert headers[E + "reason"] == "empty_output" and headers[E + "attempts"] == "2"
    assert {shape_of[d] for d in dead} == EMPTY
