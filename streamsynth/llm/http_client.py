"""AiohttpChatClient: a lean OpenAI-compatible chat completions transport.

One HTTP attempt per ``chat()`` call -- retries, rate limits and concurrency
limits are wrappers around this client. It speaks the OpenAI wire format
directly (orjson in and out) because the SDK's per-request overhead would cap a
worker well below the request rates a fleet of inference servers can absorb.

aiohttp sessions are bound to the event loop they were created on, and one
client may be used from several loops (the synchronous API's background loop,
a user's own loop, one loop per test). So the client keeps one session per
loop, created lazily, and never hands a session to a loop it does not belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from yarl import URL

from streamsynth.llm.errors import (
    EmptyChoicesError,
    LLMConnectionError,
    LLMTimeoutError,
    MalformedResponseError,
    status_error,
)
from streamsynth.llm.types import ChatRequest, ChatResult, Usage

__all__ = ["AiohttpChatClient", "LoopLocal", "completion_result"]

T = TypeVar("T")

_RATELIMIT_PREFIX = "x-ratelimit-"


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


class AiohttpChatClient:
    """An :class:`~streamsynth.llm.client.AsyncLLMClient` over raw aiohttp.

    ``base_url`` ends before ``/chat/completions`` (e.g. ``http://host:8000/v1``).
    ``timeout_s`` bounds one attempt unless the request sets its own ``timeout_s``;
    it includes any wait for a free pooled connection, so keep the concurrency
    wrapper's limit at or below ``max_connections``, which sizes each loop's pool.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "EMPTY",
        *,
        timeout_s: float = 120.0,
        max_connections: int = 256,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        # Parsed once: building a URL from a string on every request is measurable.
        self._url = URL(self.base_url + "/chat/completions")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(default_headers or {}),
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sessions: LoopLocal[aiohttp.ClientSession] = LoopLocal(
            self._new_session, _close_session, _session_closed
        )

    def __repr__(self) -> str:
        return f"AiohttpChatClient({self.base_url!r})"

    # -- sessions ----------------------------------------------------------------------
    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
        return aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client has no use for cookies
        )

    async def aclose(self) -> None:
        """Close the sessions of every loop this client was used on."""
        await self._sessions.aclose()

    # -- the request -------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> ChatResult:
        session = self._sessions.get()
        timeout = (
            self._timeout
            if request.timeout_s is None
            else aiohttp.ClientTimeout(total=request.timeout_s)
        )
        data = orjson.dumps(request.body())
        start = time.perf_counter()
        try:
            async with session.post(self._url, data=data, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError as exc:  # before ClientError: ServerTimeoutError is both
            raise LLMTimeoutError(
                f"no answer within {timeout.total} s", endpoint=self.base_url
            ) from exc
        except aiohttp.ClientError as exc:
            # Connection refused/reset, a body cut short, an unparsable HTTP response.
            raise LLMConnectionError(
                f"{type(exc).__name__}: {exc}", endpoint=self.base_url
            ) from exc
        latency = time.perf_counter() - start
        if not 200 <= status < 300:
            raise status_error(status, error_message(raw), headers, endpoint=self.base_url)
        return completion_result(raw, headers, request, endpoint=self.base_url, latency_s=latency)


async def _close_session(session: aiohttp.ClientSession) -> None:
    await session.close()


def _session_closed(session: aiohttp.ClientSession) -> bool:
    return session.closed


def completion_result(
    raw: bytes,
    headers: Mapping[str, str],
    request: ChatRequest,
    *,
    endpoint: str,
    latency_s: float,
) -> ChatResult:
    """The :class:`ChatResult` of a 2xx chat completion body (shared by the SDK client)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponseError(
            f"response is not JSON: {raw[:80]!r}", endpoint=endpoint
        ) from exc
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
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    texts: list[str] = []
    reasons: list[str | None] = []
    try:
        for choice in choices:
            content = choice["message"].get("content")
            texts.append(content if isinstance(content, str) else "")
            reasons.append(choice.get("finish_reason"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedResponseError(
            f"choice without a 'message' object: {exc!r}", endpoint=endpoint
        ) from exc
    return texts, reasons


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        lowered = key.lower()
        if lowered.startswith(_RATELIMIT_PREFIX):
            out[lowered] = value
    return out


def error_message(raw: bytes) -> str:
    """The ``error.message`` of an OpenAI error body, else the start of the body."""
    try:
        payload = orjson.loads(raw)
        message = payload["error"]["message"]
        if isinstance(message, str):
            return message
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return raw[:200].decode("utf-8", "replace")
