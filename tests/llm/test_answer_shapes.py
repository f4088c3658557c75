"""Odd answer shapes over real HTTP: no usable text is an error, odd usage never is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamsynth.config import LLMSettings
from streamsynth.llm.errors import EmptyOutputError
from streamsynth.llm.factory import build_llm_client
from streamsynth.llm.observer import LLMObserver
from streamsynth.llm.types import ChatRequest, GenerationConfig
from streamsynth.testing.stub import chat_stub

TOOL_CALL = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]

#: Message objects that hold no text a stage could publish.
EMPTY_MESSAGES: dict[str, dict[str, Any]] = {
    "null content": {"role": "assistant", "content": None},
    "tool calls only": {"role": "assistant", "content": None, "tool_calls": TOOL_CALL},
    "no content key": {"role": "assistant", "tool_calls": TOOL_CALL},
    "whitespace": {"role": "assistant", "content": " \n\t "},
    "empty parts": {"role": "assistant", "content": [{"type": "text", "text": "  "}]},
    "non-text parts": {"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]},
}


class Stub:
    """A loopback chat-completions server answering with ``message`` and ``usage``."""

    def __init__(self) -> None:
        self.message: dict[str, Any] = {"role": "assistant", "content": "fine"}
        self.usage: Any = {"prompt_tokens": 3, "completion_tokens": 2}
        self.choices: list[Any] | None = None  # set: sent instead of one choice of message
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body: dict[str, Any] = {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": self.choices
            or [{"index": 0, "message": self.message, "finish_reason": "stop"}],
        }
        if self.usage is not ...:
            body["usage"] = self.usage
        return web.Response(body=orjson.dumps(body), content_type="application/json")


class Unknown(LLMObserver):
    def __init__(self) -> None:
        self.unknown = 0

    def on_usage_unknown(self, *, stage: str, model: str, endpoint: str | None) -> None:
        self.unknown += 1


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    server = Stub()
    async with chat_stub(server.handle) as url:
        yield server, url


def _settings(url: str) -> LLMSettings:
    return LLMSettings(
        base_url=url,
        model="m",
        max_attempts=2,
        backoff_base_s=0.0,
        backoff_max_s=0.0,
        cache={"kind": "none"},  # type: ignore[arg-type]
    )


REQUEST = ChatRequest(
    model="m", messages=({"role": "user", "content": "hi"},), config=GenerationConfig(), stage="s"
)


@pytest.mark.parametrize("shape", list(EMPTY_MESSAGES))
async def test_no_usable_text_is_empty_output_retried_then_raised(
    stub: tuple[Stub, str], shape: str
) -> None:
    server, url = stub
    server.message = EMPTY_MESSAGES[shape]
    client = build_llm_client(_settings(url))
    try:
        with pytest.raises(EmptyOutputError) as info:
            await client.chat(REQUEST)
    finally:
        await client.aclose()
    assert info.value.error_type == "empty_output" and info.value.retryable
    assert info.value.attempts == 2 and server.requests == 2  # retried like a malformed answer


async def test_content_as_text_parts_is_joined(stub: tuple[Stub, str]) -> None:
    server, url = stub
    server.message = {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}],
    }
    client = build_llm_client(_settings(url))
    try:
        result = await client.chat(REQUEST)
    finally:
        await client.aclose()
    assert result.text == "Hello, world"


@pytest.mark.parametrize(
    "usage",
    [
        "lots",
        {"prompt_tokens": "ten", "completion_tokens": 2},
        {"prompt_tokens": 3, "completion_tokens": None},
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": True, "completion_tokens": 2},
        None,
        ...,  # no usage key at all
    ],
)
async def test_bad_usage_keeps_the_answer_and_counts_unknown_usage(
    stub: tuple[Stub, str], usage: Any
) -> None:
    server, url = stub
    server.usage = usage
    observer = Unknown()
    client = build_llm_client(_settings(url), observer=observer)
    try:
        result = await client.chat(REQUEST)
    finally:
        await client.aclose()
    assert result.text == "fine" and result.attempts == 1
    assert not result.usage.known and result.usage.total_tokens == 0
    assert observer.unknown == 1


async def test_odd_choice_fields_do_not_raise_untyped_errors(stub: tuple[Stub, str]) -> None:
    server, url = stub
    server.choices = [
        {"index": "b", "message": {"content": "two"}, "finish_reason": 7},
        {"index": None, "message": {"content": "one"}, "finish_reason": "stop"},
    ]
    client = build_llm_client(_settings(url))
    try:
        result = await client.chat(REQUEST)
    finally:
        await client.aclose()
    assert sorted(result.texts) == ["one", "two"] and set(result.finish_reasons) == {None, "stop"}


async def test_good_usage_is_known(stub: tuple[Stub, str]) -> None:
    _, url = stub
    observer = Unknown()
    client = build_llm_client(_settings(url), observer=observer)
    try:
        result = await client.chat(REQUEST)
    finally:
        await client.aclose()
    assert result.usage.known and result.usage.total_tokens == 5 and observer.unknown == 0
