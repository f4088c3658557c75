"""Clients on the official ``openai`` SDK: :class:`AsyncOpenAIClient` and :class:`OpenAIClient`.

For servers or proxies that only the SDK speaks to correctly (auth schemes,
Azure-style routing). The SDK's own retries are turned off (``max_retries=0``):
retries belong to :class:`~streamsynth.llm.resilient.ResilientClient`, and
attempt counts must be exact.

Errors are mapped by exception type and status code, never by message text.
The body of a 2xx answer is parsed by :mod:`~streamsynth.llm.transports.wire`,
as the aiohttp transport's is, so both agree on what "malformed" and "empty
choices" mean.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai

from streamsynth.llm.errors import (
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    status_error,
)
from streamsynth.llm.transports.wire import LoopLocal, completion_result
from streamsynth.llm.types import ChatRequest, ChatResult

__all__ = ["AsyncOpenAIClient", "OpenAIClient"]

#: Body fields the SDK's ``create()`` takes as keyword arguments; the rest go in extra_body.
_SDK_FIELDS = frozenset({"n", "temperature", "max_tokens", "seed", "stop", "top_p"})


def _create_kwargs(request: ChatRequest) -> dict[str, Any]:
    """``create()`` arguments that put exactly ``request.body()`` on the wire."""
    body = request.body()
    kwargs: dict[str, Any] = {"model": body.pop("model"), "messages": body.pop("messages")}
    extra = {k: body.pop(k) for k in list(body) if k not in _SDK_FIELDS}
    kwargs.update(body)
    if extra:  # top_k and GenerationConfig.extra_body
        kwargs["extra_body"] = extra
    if request.timeout_s is not None:
        kwargs["timeout"] = request.timeout_s
    return kwargs


@contextmanager
def _mapped_errors(endpoint: str) -> Iterator[None]:
    """Translate SDK exceptions into our typed errors."""
    try:
        yield
    except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
        raise LLMTimeoutError("request timed out", endpoint=endpoint) from exc
    except openai.APIConnectionError as exc:
        raise LLMConnectionError(f"connection error: {exc.__cause__!r}", endpoint=endpoint) from exc
    except openai.APIStatusError as exc:
        raise status_error(
            exc.status_code, exc.message, exc.response.headers, endpoint=endpoint
        ) from exc
    except openai.APIResponseValidationError as exc:
        raise MalformedResponseError("response failed validation", endpoint=endpoint) from exc
    except openai.OpenAIError as exc:
        raise LLMError(f"{type(exc).__name__}: {exc}", endpoint=endpoint) from exc


def _limits(max_connections: int) -> httpx2.Limits:
    return httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class AsyncOpenAIClient:
    """An :class:`~streamsynth.llm.client.AsyncLLMClient` on ``openai.AsyncOpenAI``.

    The SDK's httpx pool is bound to the loop it first ran on, so one
    ``AsyncOpenAI`` is kept per event loop, created lazily.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "EMPTY",
        *,
        timeout_s: float = 120.0,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._clients: LoopLocal[openai.AsyncOpenAI] = LoopLocal(
            self._new_client, _close_client, _client_closed
        )

    def __repr__(self) -> str:
        return f"AsyncOpenAIClient({self.base_url!r})"

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(
                limits=_limits(self.max_connections), timeout=self.timeout_s
            ),
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        client = self._clients.get()
        start = time.perf_counter()
        with _mapped_errors(self.base_url):
            raw = await client.chat.completions.with_raw_response.create(**_create_kwargs(request))
        return completion_result(
            raw.http_response.content,
            raw.headers,
            request,
            endpoint=self.base_url,
            latency_s=time.perf_counter() - start,
        )

    async def aclose(self) -> None:
        """Close the SDK clients of every loop this client was used on."""
        await self._clients.aclose()


async def _close_client(client: openai.AsyncOpenAI) -> None:
    await client.close()


def _client_closed(client: openai.AsyncOpenAI) -> bool:
    return client.is_closed()


class OpenAIClient:
    """A synchronous :class:`~streamsynth.llm.client.LLMClient` on ``openai.OpenAI``.

    The SDK's sync client is thread-safe, so one instance serves a stage that
    runs its calls in worker threads.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "EMPTY",
        *,
        timeout_s: float = 120.0,
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key,
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(
                limits=_limits(max_connections), timeout=timeout_s
            ),
        )

    def __repr__(self) -> str:
        return f"OpenAIClient({self.base_url!r})"

    def chat(self, request: ChatRequest) -> ChatResult:
        start = time.perf_counter()
        with _mapped_errors(self.base_url):
            raw = self._client.chat.completions.with_raw_response.create(**_create_kwargs(request))
        return completion_result(
            raw.http_response.content,
            raw.headers,
            request,
            endpoint=self.base_url,
            latency_s=time.perf_counter() - start,
        )

    def close(self) -> None:
        self._client.close()
