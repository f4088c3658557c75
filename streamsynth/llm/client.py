"""The client protocols every stage talks to.

A client takes a :class:`ChatRequest` and returns a :class:`ChatResult` or raises
an :class:`~streamsynth.llm.errors.LLMError`. The transports (one attempt each)
and :class:`~streamsynth.llm.resilient.ResilientClient` (limits, retries, cache)
implement the same protocol, so a stage runs unchanged on either, or on a test double.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

from streamsynth.llm.types import ChatRequest, ChatResult


@runtime_checkable
class AsyncLLMClient(Protocol):
    async def chat(self, request: ChatRequest) -> ChatResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class LLMClient(Protocol):
    def chat(self, request: ChatRequest) -> ChatResult: ...

    def close(self) -> None: ...


def is_async_client(client: object) -> bool:
    """True when ``client.chat`` is a coroutine function (detected once, at construction)."""
    chat = getattr(client, "chat", None)
    if chat is None or not callable(chat):
        raise TypeError(
            f"{type(client).__name__} is not an LLM client: it has no chat(request) method"
        )
    return inspect.iscoroutinefunction(chat)
