"""A real worker at DEBUG whose LLM server echoes the API key in long error bodies.

The key (non-ASCII and backslashes) must not appear, whole or in part, escaped or
not, in the worker's log, its DLQ headers or its metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from streamsynth.testing.harness import (
    TopicReader,
    Topics,
    WorkerProcess,
    custom_stage,
    doc,
    produce,
    scrape,
    worker_config,
)
from streamsynth.testing.stub import chat_stub

#: Latin-1 non-ASCII (it travels in the Authorization header) and backslashes.
API_KEY = "wkr-kéy\\Sécrêt\\ü-77-qz"
E = "streamsynth.error."


def _fragments(secret: str, size: int = 6) -> set[str]:
    forms = {
        secret,
        ascii(secret)[1:-1],
        json.dumps(secret)[1:-1],
        repr(secret.encode())[2:-1],
        secret.replace("\\", "\\\\"),
    }
    pieces = {form[i : i + size] for form in forms for i in range(len(form) - size + 1)}
    # A piece of escapes and hex digits alone (``\\xc3\\``) is no part of the secret:
    # any escaped byte 0xc3 matches it, e.g. a CRC in aiokafka's DEBUG dump of a request.
    return {p for p in pieces if not _ESCAPES_ONLY.fullmatch(p)}


_ESCAPES_ONLY = re.compile(r"[\\x0-9a-f]+")


async def _echo(request: web.Request) -> web.Response:
    """401 echoing the key at the offset the document names, as JSON or as plain text."""
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    offset = int(re.search(r"offset=(\d+);", prompt).group(1))  # type: ignore[union-attr]
    text = "x" * offset + f" rejected key {API_KEY} " + "y" * 2000
    if offset % 2:
        raw = json.dumps({"error": {"message": text, "type": "invalid_api_key"}}).encode()
    else:
        raw = text.encode("utf-8")
    return web.Response(status=401, body=raw, content_type="application/json")


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    async with chat_stub(_echo) as url:
        yield url


async def test_an_echoed_key_is_absent_from_debug_logs_dlq_headers_and_metrics(
    kafka_bootstrap: str, echo_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=2)
    offsets = list(range(0, 1300, 43))
    docs = [doc(i, f"offset={off}; document {i}") for i, off in enumerate(offsets)]
    await produce(kafka_bootstrap, topics.input, docs)
    cfg = worker_config(
        kafka_bootstrap,
        topics,
        echo_url,
        [custom_stage("summary", topics.outputs["summary"])],
        llm__api_key=API_KEY,
        logging__level="DEBUG",
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        port = worker.metrics_port()
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(lambda r: len(r.ids(topics.dlq)) >= len(docs), 90, "all dead")
        metrics = scrape(port)
    finally:
        worker.stop()
    log = worker.log_text()
    assert '"level": "DEBUG"' in log  # the worker did log at DEBUG
    headers = [r.headers for r in reader.records[topics.dlq]]
    assert {h[E + "reason"] for h in headers} == {"http_401"}
    assert any("[REDACTED]" in h[E + "message"] for h in headers)  # the key was there, removed
    assert "http_401" in metrics
    texts = {"log": log, "metrics": metrics, "dlq": "\n".join(str(h) for h in headers)}
    for where, text in texts.items():
        leaked = sorted(f for f in _fragments(API_KEY) if f in text)
        assert not leaked, (where, leaked[:5])
