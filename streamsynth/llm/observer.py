"""Events the LLM layer reports, so that metrics live outside it.

The LLM layer depends on nothing above it; ``streamsynth.metrics`` implements
this interface with Prometheus instruments. Every method is a no-op here, so an
observer overrides only what it needs. Labels passed in are bounded: stage
names, model names, endpoint URLs from config, and error *types* (never text).
"""

from __future__ import annotations

from streamsynth.llm.types import Usage


class LLMObserver:
    def on_operation(
        self,
        *,
        stage: str,
        model: str,
        endpoint: str | None,
        duration_s: float,
        error_type: str | None,
        usage: Usage | None,
        attempts: int,
    ) -> None:
        """One logical request finished (all attempts and backoff included)."""

    def on_attempt(self, *, stage: str, model: str, endpoint: str, status: str) -> None:
        """One HTTP attempt finished; ``status`` is "ok" or an error type such as http_429."""

    def on_retry(self, *, stage: str, model: str, reason: str) -> None:
        """An attempt failed with a retryable error and will be retried."""

    def on_inflight(self, *, endpoint: str, inflight: int) -> None:
        """Requests holding a concurrency slot of ``endpoint`` right now."""

    def on_concurrency_limit(self, *, endpoint: str, limit: int) -> None:
        """The endpoint's (adaptive) concurrency limit changed."""

    def on_slot_wait(self, *, endpoint: str, seconds: float) -> None:
        """A request found every slot of ``endpoint`` taken and queued this long for one."""

    def on_cache(self, *, stage: str, model: str, hit: bool) -> None:
        """A cache lookup hit or missed."""

    def on_cache_size(self, *, entries: int) -> None:
        """The response cache now holds ``entries`` answers (on disk for SQLite)."""

    def on_cache_evictions(self, *, count: int) -> None:
        """The response cache dropped ``count`` answers to stay within its bound."""

    def on_usage_unknown(self, *, stage: str, model: str, endpoint: str | None) -> None:
        """An answer came without a usable usage block (kept; its tokens are not counted)."""

    def on_cost(self, *, stage: str, model: str, usd: float) -> None:
        """Money spent by one request, from the configured prices."""

    def on_circuit(self, *, endpoint: str, open: bool) -> None:
        """The endpoint's circuit breaker opened (True) or closed (False)."""

    def on_rate_limit_remaining(
        self, *, endpoint: str, requests: float | None, tokens: float | None
    ) -> None:
        """Remaining budget as the server reports it in ``x-ratelimit-remaining-*``."""

    # -- model groups (llm/groups.py, llm/pool.py) -------------------------------------------
    def on_endpoint_group(self, *, endpoint: str, model_group: str) -> None:
        """``endpoint`` is a replica of ``model_group`` (once per endpoint, at build)."""

    def on_route(self, *, model_group: str, endpoint: str, route: str) -> None:
        """An attempt was routed to ``endpoint``: ``route`` is "home" (the stage's own
        replica), "spill" (home full) or "least_loaded" (no affinity)."""

    def on_queue_wait(self, *, stage: str, model_group: str, seconds: float) -> None:
        """An attempt waited this long in the client (rate budget, slot, global bound)."""


NULL_OBSERVER = LLMObserver()
