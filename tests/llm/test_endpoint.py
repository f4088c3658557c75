"""One attempt's lifecycle on an endpoint: what it holds, and what it gives back."""

from __future__ import annotations

import asyncio

import pytest

from streamsynth.llm.breaker import CircuitBreaker, CircuitState
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.endpoint import AttemptStatus, Endpoint
from streamsynth.llm.errors import BadRequestError, RateLimitError, ServerError
from streamsynth.llm.pool import EndpointPool
from streamsynth.llm.ratelimit import RateLimiter
from streamsynth.llm.resilient import ResilientClient
from streamsynth.llm.retry import RetryPolicy
from streamsynth.llm.types import ChatRequest, ChatResult, Usage

REQUEST = ChatRequest(model="m", messages=({"role": "user", "content": "hello"},), stage="s")


class Transport:
    """Answers with ``outcome`` (a result, an error to raise, or an event to hang on)."""

    def __init__(self) -> None:
        self.outcome: ChatResult | Exception | asyncio.Event = ChatResult(
            ["ok"], ["stop"], Usage(3, 4), "m"
        )
        self.calls = 0
        self.called = asyncio.Event()

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.calls += 1
        self.called.set()
        outcome = self.outcome
        if isinstance(outcome, asyncio.Event):
            await outcome.wait()
            raise AssertionError("released")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        return None


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _endpoint(transport: Transport, *, limit: int = 1, clock: Clock | None = None) -> Endpoint:
    clock = clock or Clock()
    return Endpoint(
        url="http://ep",
        transport=transport,
        limiter=AdaptiveLimiter("http://ep", max_limit=limit, clock=clock),
        breaker=CircuitBreaker("http://ep", failure_threshold=1, reset_s=60.0, clock=clock),
        # A frozen clock: the bucket does not refill during the test.
        rate=RateLimiter("http://ep", rpm=60, learn=False, clock=clock),
    )


def _requests_left(ep: Endpoint) -> float:
    assert ep.rate.requests is not None
    return ep.rate.requests.tokens()


async def test_a_sent_attempt_gives_its_slot_back_and_keeps_its_budget() -> None:
    ep = _endpoint(Transport())
    async with ep.attempt(REQUEST, deadline=float("inf")) as attempt:
        assert attempt.status is AttemptStatus.READY and ep.inflight == 1
        result = await attempt.send(REQUEST)
        assert ep.inflight == 0  # freed as soon as the answer is in
    assert result.text == "ok"
    assert _requests_left(ep) == 59


async def test_an_attempt_left_unsent_undoes_slot_budget_and_probe_claim() -> None:
    transport = Transport()
    clock = Clock()
    ep = _endpoint(transport, clock=clock)
    ep.breaker.on_failure()  # threshold 1: open
    clock.now += 61.0  # past reset_s: the next dispatch is the probe
    ep.dispatched()
    assert ep.breaker.state is CircuitState.HALF_OPEN and not ep.admits()
    async with ep.attempt(REQUEST, deadline=float("inf")) as attempt:
        assert attempt.status is AttemptStatus.READY
    assert transport.calls == 0 and ep.inflight == 0
    assert _requests_left(ep) == 60
    assert ep.admits()  # another request may probe now


async def test_an_attempt_that_cannot_get_a_slot_in_time_is_out_of_time() -> None:
    ep = _endpoint(Transport())
    loop = asyncio.get_running_loop()
    async with ep.attempt(REQUEST, deadline=float("inf")) as holder:
        assert holder.status is AttemptStatus.READY
        deadline = loop.time() + 0.05
        async with ep.attempt(REQUEST, deadline=deadline, clock=loop.time) as late:
            assert late.status is AttemptStatus.OUT_OF_TIME and late.queued
        assert ep.inflight == 1 and ep.limiter.waiting == 0
    assert ep.inflight == 0
    assert _requests_left(ep) == 60


async def test_a_cancelled_attempt_on_the_wire_frees_everything() -> None:
    transport = Transport()
    transport.outcome = asyncio.Event()
    ep = _endpoint(transport)

    async def run() -> None:
        async with ep.attempt(REQUEST, deadline=float("inf")) as attempt:
            await attempt.send(REQUEST)

    task = asyncio.create_task(run())
    await asyncio.wait_for(transport.called.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ep.inflight == 0 and ep.breaker.state is CircuitState.CLOSED
    assert _requests_left(ep) == 60


async def test_failures_feed_the_breaker_and_answers_prove_the_server_alive() -> None:
    transport = Transport()
    ep = _endpoint(transport, limit=4)
    transport.outcome = BadRequestError("no", status_code=400)
    async with ep.attempt(REQUEST, deadline=float("inf")) as attempt:
        with pytest.raises(BadRequestError):
            await attempt.send(REQUEST)
    assert ep.breaker.state is CircuitState.CLOSED
    transport.outcome = ServerError("down", status_code=503)
    async with ep.attempt(REQUEST, deadline=float("inf")) as attempt:
        with pytest.raises(ServerError):
            await attempt.send(REQUEST)
    assert ep.circuit_open() and ep.inflight == 0
    assert _requests_left(ep) == 60  # failures refund the budget


async def test_a_429_retry_waits_until_the_controller_would_take_it() -> None:
    """After a 429 the limiter cuts and cools down; the retry is not sent before that ends,
    even when the retry policy's own backoff is shorter."""
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    transport = Transport()
    ok = transport.outcome
    ep = Endpoint(
        url="http://ep",
        transport=transport,
        limiter=AdaptiveLimiter("http://ep", max_limit=8, cooldown_s=2.0, clock=clock),
        breaker=CircuitBreaker("http://ep", failure_threshold=5, reset_s=60.0, clock=clock),
        rate=RateLimiter("http://ep", learn=False, clock=clock),
    )

    class ThrottledOnce(Transport):
        async def chat(self, request: ChatRequest) -> ChatResult:
            self.calls += 1
            if self.calls == 1:
                raise RateLimitError("slow down", status_code=429)
            assert isinstance(ok, ChatResult)
            return ok

    ep.transport = ThrottledOnce()
    client = ResilientClient(
        EndpointPool([ep], clock=clock),
        policy=RetryPolicy(max_attempts=3, base_s=0.01, max_s=0.01, deadline_s=60.0),
        clock=clock,
        sleep=sleep,
    )
    result = await client.chat(REQUEST)
    assert result.attempts == 2 and result.text == "ok"
    assert ep.limiter.limit < 8  # the 429 was a signal the controller acted on
    assert slept and slept[-1] == pytest.approx(2.0, abs=0.05)  # its cooldown, not 10 ms
