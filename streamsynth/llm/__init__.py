"""The LLM layer: request/result types, typed errors, client protocols and transports."""

from typing import TYPE_CHECKING, Any

from streamsynth.llm.accounting import Accounting, AccountingSnapshot, UsageTotals
from streamsynth.llm.breaker import CircuitBreaker, CircuitState
from streamsynth.llm.cache import MemoryCache, ResponseCache, SQLiteCache
from streamsynth.llm.client import AsyncLLMClient, LLMClient
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.endpoint import Endpoint
from streamsynth.llm.errors import (
    AllCircuitsOpenError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConflictError,
    DeadlineExceededError,
    EmptyChoicesError,
    EmptyOutputError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    UnprocessableEntityError,
)
from streamsynth.llm.factory import build_llm_client
from streamsynth.llm.pool import EndpointPool
from streamsynth.llm.ratelimit import RateLimiter, TokenBucket
from streamsynth.llm.resilient import ResilientClient
from streamsynth.llm.retry import RetryPolicy
from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.transports.http1 import Http1ChatClient
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Message, Usage

if TYPE_CHECKING:
    from streamsynth.llm.transports.openai import AsyncOpenAIClient, OpenAIClient


def __getattr__(name: str) -> Any:
    # The openai SDK takes 1-2 s to import: load it only for users of the SDK clients.
    if name in ("AsyncOpenAIClient", "OpenAIClient"):
        from streamsynth.llm.transports import openai

        return getattr(openai, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APIStatusError",
    "Accounting",
    "AccountingSnapshot",
    "AdaptiveLimiter",
    "AiohttpChatClient",
    "AllCircuitsOpenError",
    "AsyncLLMClient",
    "AsyncOpenAIClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatRequest",
    "ChatResult",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ConflictError",
    "DeadlineExceededError",
    "EmptyChoicesError",
    "EmptyOutputError",
    "Endpoint",
    "EndpointPool",
    "GenerationConfig",
    "Http1ChatClient",
    "LLMClient",
    "LLMConnectionError",
    "LLMError",
    "LLMTimeoutError",
    "MalformedResponseError",
    "MemoryCache",
    "Message",
    "NotFoundError",
    "OpenAIClient",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimiter",
    "RequestTimeoutError",
    "ResilientClient",
    "ResponseCache",
    "RetryPolicy",
    "SQLiteCache",
    "ServerError",
    "TokenBucket",
    "UnprocessableEntityError",
    "Usage",
    "UsageTotals",
    "build_llm_client",
]
