"""AiohttpChatClient: a lean OpenAI-compatible chat completions transport.

One HTTP attempt per ``chat()`` call; retries, rate limits and concurrency belong
to :class:`~streamsynth.llm.resilient.ResilientClient`. It speaks the OpenAI wire
format directly (orjson in and out) because the SDK's per-request overhead would
cap a worker well below the request rates a fleet of inference servers can absorb.

aiohttp sessions are bound to the event loop they were created on, and one
client may be used from several loops (the synchronous API's background loop,
a user's own loop, one loop per test). So the client keeps one session per
loop, created lazily, and never hands a session to a loop it does not belong to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp
import orjson
from yarl import URL

from streamsynth.llm.errors import LLMConnectionError, LLMTimeoutError, status_error
from streamsynth.llm.transports.wire import LoopLocal, completion_result, error_message
from streamsynth.llm.types import ChatRequest, ChatResult

__all__ = ["AiohttpChatClient"]


class AiohttpChatClient:
    """An :class:`~streamsynth.llm.client.AsyncLLMClient` over raw aiohttp.

    ``base_url`` ends before ``/chat/completions`` (e.g. ``http://host:8000/v1``).
    ``timeout_s`` bounds one attempt unless the request sets its own ``timeout_s``;
    it includes any wait for a free pooled connection, so keep the endpoint's
    concurrency limit at or below ``max_connections``, which sizes each loop's pool.
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
