"""ResilientClient: the one LLM client every stage talks to, behind the plain client protocol.

Per logical request::

    cache lookup (deterministic requests only)
    the request's model picks its model group (llm/groups.py), its stage a priority
    retry loop, bounded by max_attempts and the request's deadline:
        pick an endpoint of the group (circuit admits it; the stage's home replica
            or the least loaded, llm/pool.py; not the one that just failed)
        one attempt on it (llm/endpoint.py: budget, slot held for this attempt only --
            lower priority first when queued --, the worker-wide gate if any, send,
            feedback to AIMD, breaker and rate limiter, or undo if never sent)
        on a retryable failure: sleep (full jitter, >= Retry-After), slot-free
    account tokens and cost, store in the cache, report the operation

Stages never see any of this: they call ``chat(request)`` and get a
:class:`ChatResult` whose ``attempts`` counts HTTP attempts exactly and whose
``latency_s`` spans all of them, or a typed :class:`LLMError` whose ``attempts``
does the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from streamsynth.llm.accounting import Accounting
from streamsynth.llm.cache import ResponseCache
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.endpoint import AttemptStatus, Endpoint
from streamsynth.llm.errors import (
    AllCircuitsOpenError,
    DeadlineExceededError,
    LLMError,
    RateLimitError,
)
from streamsynth.llm.groups import ModelGroup, ModelGroups, affinity_key
from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver
from streamsynth.llm.pool import EndpointPool
from streamsynth.llm.retry import RetryPolicy
from streamsynth.llm.types import ChatRequest, ChatResult

#: Shortest wait before re-asking a pool whose circuits are all open (no busy loop
#: while another request's half-open probe is in flight).
_MIN_CIRCUIT_WAIT_S = 0.05


class ResilientClient:
    """An :class:`~streamsynth.llm.client.AsyncLLMClient` with limits, retries and a cache.

    One instance is meant to serve the whole worker (every stage and batch), so its
    limits are the worker's limits. Use it from one event loop at a time.
    """

    def __init__(
        self,
        pool: EndpointPool | ModelGroups,
        *,
        gate: AdaptiveLimiter | None = None,
        policy: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        accounting: Accounting | None = None,
        observer: LLMObserver | None = None,
        timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # A bare pool is one group serving every model (tests, library use).
        self.groups = pool if isinstance(pool, ModelGroups) else ModelGroups([ModelGroup("", pool)])
        #: Attempts in flight over every group (``llm.global_max_concurrency``), if bounded.
        self.gate = gate
        self._priorities: dict[str, int] = {}
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self._accounting = accounting or Accounting()
        self._observer = observer or NULL_OBSERVER
        self.timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        urls = [ep.url for group in self.groups for ep in group.pool.endpoints]
        return f"ResilientClient({urls!r})"

    # -- introspection ------------------------------------------------------------------
    @property
    def pool(self) -> EndpointPool:
        """The default model group's endpoints (the only ones with one group)."""
        return self.groups.default.pool

    @property
    def accounting(self) -> Accounting:
        return self._accounting

    @property
    def concurrency_limit(self) -> int:
        """The current (adaptive) concurrency limit, summed over endpoints."""
        total = sum(group.pool.concurrency_limit() for group in self.groups)
        return min(total, self.gate.limit) if self.gate is not None else total

    @property
    def inflight(self) -> int:
        """HTTP attempts on the wire right now, summed over endpoints."""
        return sum(group.pool.inflight() for group in self.groups)

    # -- priorities -----------------------------------------------------------------------
    def set_stage_priority(self, stage: str, priority: int) -> None:
        """Requests of ``stage`` queue for a slot at ``priority`` (lower first; default 0)."""
        if priority:
            self._priorities[stage] = priority
        else:
            self._priorities.pop(stage, None)

    def priority_of(self, stage: str) -> int:
        return self._priorities.get(stage, 0)

    async def aclose(self) -> None:
        try:
            if self.cache is not None:
                await self.cache.aclose()
        finally:
            for group in self.groups:
                await group.pool.aclose()

    # -- the request --------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> ChatResult:
        key: str | None = None
        if self.cache is not None and request.config.deterministic:
            key = request.cache_key()
            hit = await self._cached(request, key)
            if hit is not None:
                return hit
        start = time.perf_counter()
        try:
            result = await self._with_retries(request, start)
        except LLMError as exc:
            self._failed(request, exc, time.perf_counter() - start)
            raise
        except Exception:
            # A bug below us (not a cancellation): still one operation, labelled boundedly.
            self._observer.on_operation(
                stage=request.stage,
                model=request.model,
                endpoint=None,
                duration_s=time.perf_counter() - start,
                error_type="unexpected",
                usage=None,
                attempts=0,
            )
            raise
        self._succeeded(request, result)
        if key is not None and self.cache is not None:
            await self.cache.put(key, result)
        return result

    async def _cached(self, request: ChatRequest, key: str) -> ChatResult | None:
        assert self.cache is not None
        hit = await self.cache.get(key)
        self._observer.on_cache(stage=request.stage, model=request.model, hit=hit is not None)
        if hit is None:
            return None
        self._accounting.record_cache_hit(request.stage, request.model)
        self._observer.on_operation(
            stage=request.stage,
            model=request.model,
            endpoint=None,
            duration_s=0.0,
            error_type=None,
            usage=None,
            attempts=0,
        )
        return hit

    def _succeeded(self, request: ChatRequest, result: ChatResult) -> None:
        if not result.usage.known:
            self._observer.on_usage_unknown(
                stage=request.stage, model=request.model, endpoint=result.endpoint
            )
        usd = self._accounting.record_success(
            request.stage, request.model, result.usage, result.attempts
        )
        if usd:
            self._observer.on_cost(stage=request.stage, model=request.model, usd=usd)
        self._observer.on_operation(
            stage=request.stage,
            model=request.model,
            endpoint=result.endpoint,
            duration_s=result.latency_s,
            error_type=None,
            usage=result.usage,
            attempts=result.attempts,
        )

    def _failed(self, request: ChatRequest, exc: LLMError, duration_s: float) -> None:
        self._accounting.record_error(request.stage, request.model, exc.attempts)
        self._observer.on_operation(
            stage=request.stage,
            model=request.model,
            endpoint=exc.endpoint,
            duration_s=duration_s,
            error_type=exc.error_type,
            usage=None,
            attempts=exc.attempts,
        )

    # -- the retry loop -----------------------------------------------------------------
    async def _with_retries(self, request: ChatRequest, start: float) -> ChatResult:
        policy = self.policy
        deadline = self._clock() + policy.deadline_s
        group = self.groups.for_model(request.model)
        pool = group.pool
        key = affinity_key(request) if pool.routing == "prefix_affinity" else None
        priority = self._priorities.get(request.stage, 0)
        sent = _with_priority(request, priority) if group.send_priority else request
        attempts = 0
        avoid: Endpoint | None = None
        while True:
            try:
                endpoint = pool.choose(avoid, key)
            except AllCircuitsOpenError as exc:
                await self._wait_for_circuit(request, exc, attempts, deadline)
                continue
            outcome = await self._attempt(group, endpoint, sent, deadline, attempts, priority)
            if outcome is None:  # not sent: the endpoint went bad while we queued for it
                continue
            attempts += 1
            # The endpoint's label, not the transport's URL, goes on into metrics and outputs.
            outcome.endpoint = endpoint.url
            outcome.attempts = attempts
            if isinstance(outcome, ChatResult):
                outcome.latency_s = time.perf_counter() - start
                return outcome
            if not policy.should_retry(outcome, attempts):
                raise outcome
            delay = policy.delay_s(attempts, outcome)
            if isinstance(outcome, RateLimitError):
                # The controller cut on this 429: wait until some replica would take the retry.
                ready = min(ep.ready_at() for ep in pool.endpoints)
                delay = max(delay, ready - self._clock())
            if self._clock() + delay >= deadline:
                raise self._deadline_error(request, endpoint.url, attempts) from outcome
            self._observer.on_retry(
                stage=request.stage, model=request.model, reason=outcome.error_type
            )
            avoid = endpoint
            await self._sleep(delay)

    async def _attempt(
        self,
        group: ModelGroup,
        endpoint: Endpoint,
        request: ChatRequest,
        deadline: float,
        attempts: int,
        priority: int,
    ) -> ChatResult | LLMError | None:
        """One attempt on ``endpoint``: its result, or the error it ended with.

        None when it was not sent because another endpoint should be chosen. Raises a
        deadline error (``attempts``: those made so far) when the deadline passes
        before it can be sent.
        """
        queued_at = self._clock()
        async with endpoint.attempt(
            request, deadline=deadline, clock=self._clock, sleep=self._sleep, priority=priority
        ) as attempt:
            if attempt.status is AttemptStatus.OUT_OF_TIME:
                raise self._deadline_error(request, endpoint.url, attempts)
            if attempt.queued and not group.pool.still_suitable(endpoint):
                return None
            gated = await self._enter_gate(priority, deadline)
            if not gated:
                raise self._deadline_error(request, endpoint.url, attempts)
            try:
                # Budget, slot and gate: the client-side queue wait of this attempt.
                self._observer.on_queue_wait(
                    stage=request.stage, model_group=group.name, seconds=self._clock() - queued_at
                )
                result = await attempt.send(self._bounded(request, deadline))
            except LLMError as exc:
                self._report_attempt(request, endpoint, exc.error_type)
                if exc.retryable:
                    group.pool.cool_down(endpoint)
                return exc
            finally:
                if self.gate is not None:
                    self.gate.release()
        self._report_attempt(request, endpoint, "ok")
        return result

    async def _enter_gate(self, priority: int, deadline: float) -> bool:
        """A slot of the worker-wide bound, if there is one; False if the deadline passed."""
        gate = self.gate
        if gate is None or gate.try_acquire():
            return True
        try:
            await gate.acquire(priority=priority, timeout_s=max(deadline - self._clock(), 0.0))
        except TimeoutError:
            return False
        return True

    def _report_attempt(self, request: ChatRequest, endpoint: Endpoint, status: str) -> None:
        self._observer.on_attempt(
            stage=request.stage, model=request.model, endpoint=endpoint.url, status=status
        )

    async def _wait_for_circuit(
        self, request: ChatRequest, exc: AllCircuitsOpenError, attempts: int, deadline: float
    ) -> None:
        now = self._clock()
        wait = max(exc.reopens_at - now, _MIN_CIRCUIT_WAIT_S)
        if now + wait >= deadline:
            exc.attempts = attempts
            raise exc
        self._observer.on_retry(stage=request.stage, model=request.model, reason=exc.error_type)
        await self._sleep(wait)

    def _deadline_error(
        self, request: ChatRequest, endpoint: str | None, attempts: int = 0
    ) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"request for stage {request.stage!r} ran out of its {self.policy.deadline_s} s "
            "deadline",
            attempts=attempts,
            endpoint=endpoint,
        )

    def _bounded(self, request: ChatRequest, deadline: float) -> ChatRequest:
        """The request with its attempt timeout cut to what is left of the deadline."""
        remaining = deadline - self._clock()
        timeout = request.timeout_s if request.timeout_s is not None else self.timeout_s
        if remaining >= timeout:
            return request
        return dataclasses.replace(request, timeout_s=max(remaining, 0.001))


def _with_priority(request: ChatRequest, priority: int) -> ChatRequest:
    """``request`` with vLLM's ``priority`` body field (sent, never part of the cache key:
    the cache was looked up with the request as the stage built it)."""
    extra = {**request.config.extra_body, "priority": priority}
    return dataclasses.replace(
        request, config=request.config.model_copy(update={"extra_body": extra})
    )
