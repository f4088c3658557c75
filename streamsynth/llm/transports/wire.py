"""What both transports share: the parsing of an answer, and one resource per event loop.

A 2xx body becomes a :class:`ChatResult` here (or a typed error when it is not a
usable chat completion), an error body yields its message, and the
``x-ratelimit-*`` headers are kept for the rate limiter. :class:`LoopLocal` keeps
one pooled HTTP client per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import orjson

from streamsynth.llm.errors import EmptyChoicesError, EmptyOutputError, MalformedResponseError
from streamsynth.llm.types import UNKNOWN_USAGE, ChatRequest, ChatResult, Usage
from streamsynth.redact import scrub

__all__ = ["LoopLocal", "completion_result", "error_message", "ratelimit_headers"]

T = TypeVar("T")

_RATELIMIT_PREFIX = "x-ratelimit-"
#: Bounds the work on a huge error body; far beyond what any message keeps.
_MAX_ERROR_BODY_BYTES = 1 << 20


class LoopLocal(Generic[T]):
    """One resource per event loop, made on first use and closed with its loop.

    Pooled HTTP clients are bound to the loop that created them, so a client
    used from several loops needs one pool each. Every resource is tied to a
    small async generator started on its loop: ``asyncio.run`` (and pytest's
    loop teardown) finalize a loop's async generators before closing it, which
    closes the resource there -- no socket outlives its loop, even when the
    user never calls ``aclose()``. A loop that is never shut down (a daemon
    thread's) simply keeps its pool until the process exits, silently.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        closer: Callable[[T], Awaitable[None]],
        is_closed: Callable[[T], bool],
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._is_closed = is_closed
        self._items: dict[asyncio.AbstractEventLoop, tuple[T, AsyncGenerator[None, None]]] = {}
        self._lock = threading.Lock()

    def get(self) -> T:
        """This loop's resource (the hot path: one dict lookup)."""
        loop = asyncio.get_running_loop()
        entry = self._items.get(loop)
        if entry is not None and not self._is_closed(entry[0]):
            return entry[0]
        return self._create(loop)

    def _create(self, loop: asyncio.AbstractEventLoop) -> T:
        with self._lock:
            for dead in [lp for lp in self._items if lp.is_closed()]:
                del self._items[dead]
            item = self._factory()
            holder = self._holder(item)
            # Step it to its first yield now: that registers it with this loop's
            # shutdown_asyncgens() (the loop's first-iteration hook runs here).
            with contextlib.suppress(StopIteration):
                holder.asend(None).send(None)
            self._items[loop] = (item, holder)
            return item

    def items(self) -> list[T]:
        return [item for item, _ in self._items.values()]

    async def _holder(self, item: T) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self._closer(item)

    @staticmethod
    async def _finalize(holder: AsyncGenerator[None, None]) -> None:
        await holder.aclose()

    async def aclose(self) -> None:
        """Close every loop's resource: this loop's here, other running loops' on theirs."""
        with self._lock:
            entries, self._items = self._items, {}
        current = asyncio.get_running_loop()
        for loop, (_, holder) in entries.items():
            if loop.is_closed():
                continue
            if loop is current:
                await holder.aclose()
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._finalize(holder), loop)
                await asyncio.wrap_future(future)


def completion_result(
    raw: bytes,
    headers: Mapping[str, str],
    request: ChatRequest,
    *,
    endpoint: str,
    latency_s: float,
) -> ChatResult:
    """The :class:`ChatResult` of a 2xx chat completion body (both transports)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        start = scrub(raw[:_MAX_ERROR_BODY_BYTES].decode("utf-8", "replace"), 80)
        raise MalformedResponseError(f"response is not JSON: {start!r}", endpoint=endpoint) from exc
    texts, reasons = _choices(payload, endpoint)
    return ChatResult(
        texts=texts,
        finish_reasons=reasons,
        usage=_usage(payload.get("usage")),
        model=str(payload.get("model") or request.model),
        latency_s=latency_s,
        attempts=1,
        endpoint=endpoint,
        headers=ratelimit_headers(headers),
    )


def _choices(payload: Any, endpoint: str) -> tuple[list[str], list[str | None]]:
    """Texts and finish reasons of a chat completion, in choice-index order."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list):
        raise MalformedResponseError("response has no 'choices' list", endpoint=endpoint)
    if not choices:
        raise EmptyChoicesError("response has an empty 'choices' list", endpoint=endpoint)
    if len(choices) > 1:
        choices = sorted(choices, key=_index)
    texts: list[str] = []
    reasons: list[str | None] = []
    try:
        for choice in choices:
            texts.append(_text(choice["message"].get("content")))
            reason = choice.get("finish_reason")
            reasons.append(reason if isinstance(reason, str) else None)
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedResponseError(
            f"choice without a 'message' object: {exc!r}", endpoint=endpoint
        ) from exc
    if any(not text.strip() for text in texts):
        # Null content, tool calls only, whitespace: nothing a stage could publish.
        raise EmptyOutputError("an answer has no text", endpoint=endpoint)
    return texts, reasons


def _index(choice: Any) -> int:
    """A choice's position; a missing or odd ``index`` sorts first instead of raising."""
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def _text(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (part.get("text") if isinstance(part, dict) else part for part in content)
        return "".join(part for part in parts if isinstance(part, str))
    return ""


def _count(value: Any) -> int | None:
    """A token count, or None when it is not a non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return int(value)


def _usage(raw: Any) -> Usage:
    """The usage block; missing or not numbers: unknown (counted, never a reason to fail)."""
    if not isinstance(raw, dict):
        return UNKNOWN_USAGE
    prompt = _count(raw.get("prompt_tokens", 0))
    completion = _count(raw.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return UNKNOWN_USAGE
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        # The server's prefix-cache hits (OpenAI, vLLM with prefix caching) when it says.
        cached_tokens=_count(cached),
    )


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        lowered = key.lower()
        if lowered.startswith(_RATELIMIT_PREFIX):
            out[lowered] = value
    return out


def error_message(raw: bytes) -> str:
    """The ``error.message`` of an OpenAI error body, else the body (whole: it is redacted
    before it is cut, in :func:`~streamsynth.llm.errors.status_error`)."""
    try:
        payload = orjson.loads(raw)
        message = payload["error"]["message"]
        if isinstance(message, str):
            return message
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return raw[:_MAX_ERROR_BODY_BYTES].decode("utf-8", "replace")
