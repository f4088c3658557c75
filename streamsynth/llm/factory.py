"""Build the worker's one LLM client from its settings.

``build_llm_client(settings.llm)`` returns a :class:`ResilientClient` over one
transport per base URL (our HTTP/1.1 pool by default; aiohttp or the OpenAI SDK with
``transport: aiohttp|openai``). Every limit in :class:`LLMSettings` that is per endpoint
(``max_concurrency``, ``rpm``, ``tpm``, the breaker) applies to each base URL
separately: several URLs are replicas, each with its own capacity. Each model
group (``llm.models``, or the ``base_url(s)`` + ``model`` shorthand) gets its own
pool of such endpoints, with the group's own limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from streamsynth.llm.accounting import Accounting
from streamsynth.llm.breaker import CircuitBreaker
from streamsynth.llm.cache import MemoryCache, ResponseCache, SQLiteCache
from streamsynth.llm.client import AsyncLLMClient
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.endpoint import Endpoint
from streamsynth.llm.groups import ModelGroup, ModelGroups
from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver
from streamsynth.llm.pool import EndpointPool
from streamsynth.llm.ratelimit import RateLimiter
from streamsynth.llm.resilient import ResilientClient
from streamsynth.llm.retry import RetryPolicy
from streamsynth.llm.server_metrics import ServerMetricsScraper, default_metrics_url
from streamsynth.redact import redact

if TYPE_CHECKING:  # config imports this package: no runtime import back
    from streamsynth.config import LLMSettings
    from streamsynth.llm.transports.aiohttp import AiohttpChatClient
    from streamsynth.llm.transports.http1 import Http1ChatClient
    from streamsynth.llm.transports.openai import AsyncOpenAIClient

    Transport = type[Http1ChatClient] | type[AiohttpChatClient] | type[AsyncOpenAIClient]

__all__ = ["build_cache", "build_llm_client", "build_transport"]


def build_transport(settings: LLMSettings, base_url: str, api_key: str) -> AsyncLLMClient:
    """The raw, single-attempt client for one base URL."""
    cls = _transport_class(settings.transport)
    client: AsyncLLMClient = cls(
        base_url, api_key, timeout_s=settings.timeout_s, max_connections=settings.max_concurrency
    )
    return client


def _transport_class(name: str) -> Transport:
    """Imported when chosen: the SDK's import alone takes a noticeable part of a second."""
    if name == "openai":
        from streamsynth.llm.transports.openai import AsyncOpenAIClient

        return AsyncOpenAIClient
    if name == "aiohttp":
        from streamsynth.llm.transports.aiohttp import AiohttpChatClient

        return AiohttpChatClient
    from streamsynth.llm.transports.http1 import Http1ChatClient

    return Http1ChatClient


def build_cache(
    settings: LLMSettings,
    path_override: str | Path | None = None,
    observer: LLMObserver | None = None,
) -> ResponseCache | None:
    cache = settings.cache
    if cache.kind == "none":
        return None
    if cache.kind == "memory":
        return MemoryCache(cache.memory_entries, observer=observer)
    return SQLiteCache(
        path_override or cache.path,
        memory_entries=cache.memory_entries,
        max_entries=cache.max_entries,
        observer=observer,
    )


def build_endpoint(
    settings: LLMSettings, url: str, api_key: str, observer: LLMObserver
) -> Endpoint:
    # ``label`` names the endpoint in metrics, logs and errors; only the transport sees
    # the URL itself (config rejects credentials in it; this keeps any query token out).
    label = redact(url)
    limiter = AdaptiveLimiter(
        label,
        max_limit=settings.max_concurrency,
        min_limit=settings.min_concurrency,
        adaptive=settings.adaptive_concurrency,
        observer=observer,
    )
    return Endpoint(
        url=label,
        transport=build_transport(settings, url, api_key),
        limiter=limiter,
        scraper=build_scraper(settings, url, label, limiter),
        breaker=CircuitBreaker(
            label,
            failure_threshold=settings.breaker_failures,
            reset_s=settings.breaker_reset_s,
            observer=observer,
        ),
        rate=RateLimiter(
            label,
            rpm=settings.rpm,
            tpm=settings.tpm,
            learn=settings.learn_rate_limits,
            observer=observer,
        ),
    )


def build_scraper(
    settings: LLMSettings, url: str, label: str, limiter: AdaptiveLimiter
) -> ServerMetricsScraper | None:
    """The reader of the server's own queue for ``limiter`` (None: latency alone)."""
    if settings.server_metrics == "off" or not settings.adaptive_concurrency:
        return None
    metrics_url = settings.server_metrics_urls.get(url) or default_metrics_url(url)
    return ServerMetricsScraper(label, metrics_url, limiter.on_server_load)


def build_group(name: str, settings: LLMSettings, observer: LLMObserver) -> ModelGroup:
    """One model group's pool (``settings``: the group's complete LLM section)."""
    api_key = settings.resolve_api_key()
    endpoints = [build_endpoint(settings, url, api_key, observer) for url in settings.base_urls]
    for ep in endpoints:
        observer.on_endpoint_group(endpoint=ep.url, model_group=name)
    pool = EndpointPool(
        endpoints,
        cooldown_s=settings.endpoint_cooldown_s,
        routing=settings.routing,
        name=name,
        observer=observer,
    )
    return ModelGroup(name, pool, send_priority=settings.send_priority)


def build_llm_client(
    settings: LLMSettings,
    *,
    observer: LLMObserver | None = None,
    cache_path_override: str | Path | None = None,
) -> ResilientClient:
    """The worker's LLM client: call once, share with every stage, ``await aclose()`` at exit."""
    observer = observer or NULL_OBSERVER
    groups = ModelGroups(
        [build_group(name, group, observer) for name, group in settings.groups().items()]
    )
    gate = None
    if settings.global_max_concurrency is not None:
        gate = AdaptiveLimiter("global", max_limit=settings.global_max_concurrency, adaptive=False)
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        base_s=settings.backoff_base_s,
        max_s=settings.backoff_max_s,
        deadline_s=settings.deadline_s,
    )
    return ResilientClient(
        groups,
        gate=gate,
        policy=policy,
        cache=build_cache(settings, cache_path_override, observer),
        accounting=Accounting(settings.prices),
        observer=observer,
        timeout_s=settings.timeout_s,
    )
