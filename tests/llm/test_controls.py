"""Unit tests of the robustness controls' arithmetic, with an injectable clock."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamsynth.config import ModelPrice
from streamsynth.llm.accounting import Accounting
from streamsynth.llm.breaker import CircuitBreaker, CircuitState
from streamsynth.llm.cache import MemoryCache, SQLiteCache
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.errors import (
    BadRequestError,
    LLMConnectionError,
    LLMTimeoutError,
    MalformedResponseError,
    RateLimitError,
    status_error,
)
from streamsynth.llm.observer import LLMObserver
from streamsynth.llm.pool import AllCircuitsOpenError, Endpoint, EndpointPool
from streamsynth.llm.ratelimit import RateLimiter, TokenBucket, estimate_tokens
from streamsynth.llm.retry import RetryPolicy, is_overload, is_retryable
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Recorder(LLMObserver):
    limits: list[int] = field(default_factory=list)
    circuits: list[bool] = field(default_factory=list)
    remaining: list[tuple[float | None, float | None]] = field(default_factory=list)

    def on_concurrency_limit(self, *, endpoint: str, limit: int) -> None:
        self.limits.append(limit)

    def on_circuit(self, *, endpoint: str, open: bool) -> None:
        self.circuits.append(open)

    def on_rate_limit_remaining(
        self, *, endpoint: str, requests: float | None, tokens: float | None
    ) -> None:
        self.remaining.append((requests, tokens))


# -- retry classification and backoff ---------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable(status_error(status, "x"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_non_retryable_statuses(status: int) -> None:
    assert not is_retryable(status_error(status, "x"))


def test_classification_ignores_message_text() -> None:
    # NeMo Curator retries anything whose text contains "rate"; we look at the type only.
    assert not is_retryable(BadRequestError("please generate at a separate rate", status_code=400))
    assert is_retryable(LLMConnectionError("boom"))
    assert is_retryable(LLMTimeoutError("slow"))
    assert is_retryable(MalformedResponseError("not json"))
    assert not is_retryable(ValueError("rate limit 429"))
    assert is_overload(RateLimitError("x", status_code=429))
    assert is_overload(LLMTimeoutError("x"))
    assert is_overload(status_error(503, "x"))
    assert not is_overload(status_error(500, "x"))


def test_full_jitter_backoff_bounds() -> None:
    policy = RetryPolicy(max_attempts=6, base_s=0.5, max_s=4.0, rng=random.Random(7))
    assert [policy.backoff_cap_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.backoff_cap_s(10_000) == 4.0  # no overflow
    delays = [policy.delay_s(3) for _ in range(2000)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    # Full jitter: spread over the whole interval, not clustered at the cap.
    assert min(delays) < 0.2 and max(delays) > 1.8


def test_retry_after_is_a_lower_bound() -> None:
    policy = RetryPolicy(base_s=0.01, max_s=0.02, rng=random.Random(1))
    err = status_error(429, "slow down", {"Retry-After": "2"})
    assert all(policy.delay_s(1, err) >= 2.0 for _ in range(100))
    err_ms = status_error(429, "slow down", {"retry-after-ms": "1500"})
    assert policy.delay_s(1, err_ms) >= 1.5


def test_should_retry_counts_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    err = status_error(503, "x")
    assert policy.should_retry(err, 1) and policy.should_retry(err, 2)
    assert not policy.should_retry(err, 3)
    assert not policy.should_retry(status_error(400, "x"), 1)


# -- AIMD -------------------------------------------------------------------------------


def test_aimd_decreases_once_per_window_and_recovers() -> None:
    # The control law itself is tested on simulated servers in test_controller.py.
    clock, obs = FakeClock(), Recorder()
    lim = AdaptiveLimiter(
        "e", max_limit=32, min_limit=2, initial_limit=32, observer=obs, clock=clock
    )
    started = clock()
    clock.advance(0.1)
    # A burst of 429s from attempts that all started before the first decrease: one signal.
    assert lim.on_overload(started)
    for _ in range(20):
        assert not lim.on_overload(started)
    assert lim.limit == 24  # x0.75
    # The window after the cut is clean: the cut was about load, and it is kept ...
    for _ in range(32):  # a window: at least 32 outcomes
        clock.advance(0.01)
        lim.on_success()
    clock.advance(0.1)
    assert lim.on_overload(clock())  # ... so an attempt started after it counts again
    assert lim.limit == 18
    assert lim.ready_at() >= clock() + 1.9  # the cooldown a 429 retry waits for
    # Clean windows after the cooldown, every slot busy (a server answering in 0.5 s,
    # one answer per 10 ms at most): the limit climbs back, never above the ceiling.
    successes = 0
    sent: deque[float] = deque()
    while lim.limit < 32 and successes < 10_000:
        while lim.try_acquire():
            sent.append(clock())
        clock.advance(0.01)
        if sent and sent[0] <= clock() - 0.5:
            lim.release()
            lim.on_success(sent.popleft())
            successes += 1
    assert lim.limit == 32 and successes < 2_000, successes
    assert obs.limits[0] == 32 and min(obs.limits) == 18 and obs.limits[-1] == 32


def test_non_adaptive_limiter_is_fixed() -> None:
    lim = AdaptiveLimiter("e", max_limit=8, min_limit=1, adaptive=False)
    assert not lim.on_overload(0.0)
    assert lim.limit == 8


async def test_limiter_queues_fifo_and_never_exceeds_limit() -> None:
    lim = AdaptiveLimiter("e", max_limit=3)
    peak = 0
    order: list[int] = []

    async def worker(i: int) -> None:
        nonlocal peak
        await lim.acquire()
        try:
            peak = max(peak, lim.inflight)
            order.append(i)
            await asyncio.sleep(0)
        finally:
            lim.release()

    await asyncio.gather(*(worker(i) for i in range(50)))
    assert peak == 3
    assert order == list(range(50))
    assert lim.inflight == 0 and lim.waiting == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    lim = AdaptiveLimiter("e", max_limit=1)
    assert lim.try_acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    assert lim.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lim.waiting == 0
    lim.release()
    assert lim.inflight == 0
    # And a timeout on the wait leaves nothing behind either.
    assert lim.try_acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await lim.acquire()
    lim.release()
    assert lim.inflight == 0 and lim.try_acquire()


async def test_a_bounded_wait_times_out_and_the_next_waiter_gets_the_slot() -> None:
    lim = AdaptiveLimiter("e", max_limit=1, adaptive=False)
    assert lim.try_acquire()
    short = asyncio.ensure_future(lim.acquire(timeout_s=0.01))
    patient = asyncio.ensure_future(lim.acquire(timeout_s=60))
    with pytest.raises(TimeoutError):
        await short
    assert lim.waiting == 1 and not patient.done()
    lim.release()
    await patient  # the slot skips the waiter that left
    assert lim.inflight == 1 and lim.waiting == 0
    lim.release()
    assert lim.inflight == 0 and lim.try_acquire()


async def test_thousands_queued_share_one_timer_and_a_timeout_storm_leaves_no_debris() -> None:
    lim = AdaptiveLimiter("e", max_limit=1, adaptive=False)
    assert lim.try_acquire()
    loop = asyncio.get_running_loop()
    timers = 0
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return real_call_at(when, callback, *args)

    loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]
    try:
        doomed = [asyncio.ensure_future(lim.acquire(timeout_s=0.05)) for _ in range(2_000)]
        kept = [asyncio.ensure_future(lim.acquire(priority=1, timeout_s=60)) for _ in range(3)]
        await asyncio.sleep(0)
        assert lim.waiting == 2_003
        assert timers <= 3, timers  # not one per waiter
        results = await asyncio.gather(*doomed, return_exceptions=True)
    finally:
        loop.call_at = real_call_at  # type: ignore[method-assign]
    assert all(isinstance(r, TimeoutError) for r in results)
    assert lim.waiting == 3
    assert len(lim._waiters) < 100  # the gone ones were compacted away, not scanned out one by one
    for waiter in kept:  # the survivors still get their slots, in arrival order
        lim.release()
        await waiter
    assert lim.inflight == 1 and lim.waiting == 0


# -- token buckets ----------------------------------------------------------------------


def test_token_bucket_reserve_refill_and_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock)  # 1 per second
    assert bucket.reserve(60) == 0.0
    assert bucket.reserve(1) == pytest.approx(1.0)  # in debt: wait for one token
    assert bucket.reserve(1) == pytest.approx(2.0)  # FIFO: the next waits longer
    clock.advance(2.0)
    assert bucket.tokens() == pytest.approx(0.0)
    clock.advance(1000)
    assert bucket.tokens() == 60  # capped at capacity
    bucket.refund(-10)
    assert bucket.tokens() == 50


def test_tpm_charged_up_front_and_corrected() -> None:
    clock = FakeClock()
    rl = RateLimiter("e", tpm=10_000, learn=False, clock=clock)
    req = ChatRequest(
        model="m",
        messages=({"role": "user", "content": "x" * 400},),
        config=GenerationConfig(max_tokens=500),
    )
    est = estimate_tokens(req)
    assert est == 400 // 4 + 1 + 500
    res = rl.reserve(est)
    assert res.wait_s == 0.0
    assert rl.tokens is not None and rl.tokens.tokens() == 10_000 - est
    rl.settle(res, actual_tokens=150)
    assert rl.tokens.tokens() == 10_000 - 150
    res2 = rl.reserve(est)
    rl.cancel(res2)
    assert rl.tokens.tokens() == 10_000 - 150


def test_limits_learned_from_headers() -> None:
    clock, obs = FakeClock(), Recorder()
    rl = RateLimiter("e", learn=True, observer=obs, clock=clock)
    assert rl.requests is None and rl.tokens is None and rl.active
    rl.observe(
        {
            "x-ratelimit-limit-requests": "120",
            "x-ratelimit-remaining-requests": "3",
            "x-ratelimit-limit-tokens": "6000",
            "x-ratelimit-remaining-tokens": "5000",
        }
    )
    assert rl.requests is not None and rl.requests.capacity == 120
    assert rl.requests.tokens() == 3  # the server's count wins
    assert rl.tokens is not None and rl.tokens.tokens() == 5000
    assert obs.remaining == [(3.0, 5000.0)]
    waits = [rl.reserve(1).wait_s for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == pytest.approx(0.5)  # 2 per second


def test_configured_limits_are_not_overridden_by_headers() -> None:
    rl = RateLimiter("e", rpm=10, learn=True, clock=FakeClock())
    rl.observe({"x-ratelimit-limit-requests": "1000"})
    assert rl.requests is not None and rl.requests.capacity == 10
    assert not RateLimiter("e", learn=False).active


# -- circuit breaker --------------------------------------------------------------------


def test_breaker_opens_probes_and_closes() -> None:
    clock, obs = FakeClock(), Recorder()
    br = CircuitBreaker("e", failure_threshold=3, reset_s=5.0, observer=obs, clock=clock)
    br.on_failure()
    br.on_failure()
    br.on_success()  # consecutive only
    for _ in range(3):
        assert br.available()
        br.on_dispatch()
        br.on_failure()
    assert br.state is CircuitState.OPEN and obs.circuits == [True]
    assert not br.available()
    clock.advance(5.0)
    assert br.available()
    br.on_dispatch()  # the probe
    assert br.state.value == "half_open" and not br.available()
    br.on_failure()  # probe failed: open again for another reset_s
    assert br.state is CircuitState.OPEN and not br.available()
    clock.advance(5.0)
    br.on_dispatch()
    br.on_success()
    assert br.state.value == "closed" and obs.circuits == [True, False]


def test_abandoned_probe_lets_another_request_probe() -> None:
    clock = FakeClock()
    br = CircuitBreaker("e", failure_threshold=1, reset_s=1.0, clock=clock)
    br.on_failure()
    clock.advance(1.0)
    br.on_dispatch()
    assert not br.available()
    br.on_abandoned()
    assert br.available()


# -- pool -------------------------------------------------------------------------------


class _NoTransport:
    async def chat(self, request: ChatRequest) -> ChatResult:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        return None


def _endpoint(url: str, clock: FakeClock, limit: int = 4) -> Endpoint:
    return Endpoint(
        url=url,
        transport=_NoTransport(),
        limiter=AdaptiveLimiter(url, max_limit=limit, clock=clock),
        breaker=CircuitBreaker(url, failure_threshold=1, reset_s=5.0, clock=clock),
        rate=RateLimiter(url, learn=False, clock=clock),
    )


def test_pool_routes_to_least_loaded_and_avoids_failed() -> None:
    clock = FakeClock()
    a, b = _endpoint("a", clock), _endpoint("b", clock)
    pool = EndpointPool([a, b], cooldown_s=10.0, clock=clock)
    assert a.limiter.try_acquire() and a.limiter.try_acquire()
    assert pool.choose() is b
    assert pool.choose(avoid=b) is a  # a retry goes elsewhere when it can
    pool.cool_down(b)
    assert pool.choose() is a  # cooling down: used only when nothing else is admissible
    a.breaker.on_failure()  # threshold 1: open
    assert pool.choose() is b
    b.breaker.on_failure()
    with pytest.raises(AllCircuitsOpenError) as info:
        pool.choose()
    assert info.value.retryable and info.value.reopens_at == pytest.approx(clock() + 5.0)


# -- accounting and cache ---------------------------------------------------------------


def test_accounting_cost_per_stage_and_model() -> None:
    acc = Accounting({"m": ModelPrice(input_per_million=1.0, output_per_million=2.0)})
    usd = acc.record_success("s1", "m", Usage(1_000_000, 500_000), attempts=2)
    assert usd == pytest.approx(2.0)
    acc.record_success("s2", "free", Usage(10, 10), attempts=1)
    acc.record_cache_hit("s1", "m")
    acc.record_error("s1", "m", attempts=3)
    snap = acc.snapshot()
    assert snap.by_key[("s1", "m")].cost_usd == pytest.approx(2.0)
    assert snap.by_key[("s1", "m")].requests == 3
    assert snap.by_key[("s1", "m")].attempts == 5
    assert snap.total.prompt_tokens == 1_000_010 and snap.total.cache_hits == 1
    assert snap.as_dict()["total"]["cost_usd"] == pytest.approx(2.0)


def _result(text: str) -> ChatResult:
    return ChatResult([text], ["stop"], Usage(3, 4), "m", latency_s=0.2, attempts=2)


async def test_memory_cache_lru() -> None:
    cache = MemoryCache(2)
    await cache.put("a", _result("A"))
    await cache.put("b", _result("B"))
    assert (await cache.get("a")) is not None  # a is now most recent
    await cache.put("c", _result("C"))
    assert await cache.get("b") is None
    hit = await cache.get("a")
    assert hit is not None and hit.text == "A" and hit.cached and hit.attempts == 0
    assert hit.usage == Usage() and hit.latency_s == 0.0


async def test_sqlite_cache_persists(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = SQLiteCache(path, memory_entries=0)
    for i in range(50):
        await cache.put(f"k{i}", _result(f"T{i}"))
    assert (await cache.get("k7")) is not None  # served before the flush finished
    await cache.aclose()
    again = SQLiteCache(path, memory_entries=10)
    hit = await again.get("k49")
    assert hit is not None and hit.text == "T49" and hit.cached
    assert await again.get("missing") is None
    await again.aclose()
