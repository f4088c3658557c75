"""One base URL with its own limits and health, and the life of one attempt on it.

An :class:`Endpoint` bundles a transport with the three controls that guard it:
the adaptive concurrency limiter, the circuit breaker and the RPM/TPM budget.
Nothing outside this module drives those controls per attempt; a caller opens an
:class:`Attempt` and the endpoint does the bookkeeping::

    async with endpoint.attempt(request, deadline=deadline) as attempt:
        if attempt.status is AttemptStatus.READY:
            result = await attempt.send(request)

Entering reserves the rate budget (waiting out a debt) and takes a concurrency
slot. :meth:`Attempt.send` puts the request on the wire, gives the slot back and
feeds the outcome to the limiter, the breaker and the budget. Leaving the block
without sending (the deadline would pass first, the caller chose another
endpoint, a cancellation) undoes the reservation and any half-open probe claim,
so an attempt that never reached the server costs nothing.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from streamsynth.llm.breaker import CircuitBreaker, CircuitState
from streamsynth.llm.client import AsyncLLMClient
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.errors import APIStatusError, LLMError
from streamsynth.llm.onwire import mark_on_wire
from streamsynth.llm.ratelimit import NO_RESERVATION, RateLimiter, Reservation, estimate_tokens
from streamsynth.llm.retry import is_overload
from streamsynth.llm.server_metrics import ServerMetricsScraper
from streamsynth.llm.types import ChatRequest, ChatResult

__all__ = ["Attempt", "AttemptStatus", "Endpoint"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(eq=False)
class Endpoint:
    """One base URL with its transport and its own limits and health."""

    url: str
    transport: AsyncLLMClient
    limiter: AdaptiveLimiter
    breaker: CircuitBreaker
    rate: RateLimiter
    cooldown_until: float = field(default=float("-inf"))
    #: Reads the server's own queue for the limiter (None: latency alone).
    scraper: ServerMetricsScraper | None = None

    # -- routing (read by the pool) -------------------------------------------------------
    def admits(self, now: float | None = None) -> bool:
        """Would its circuit admit a request now? (Does not change state.)"""
        return self.breaker.available(now)

    def load(self) -> float:
        """Slots in use and queued over the limit (above 1 means a queue)."""
        return self.limiter.load()

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def cool_down(self, until: float) -> None:
        self.cooldown_until = until

    def circuit_open(self) -> bool:
        return self.breaker.state is CircuitState.OPEN

    def reopens_at(self) -> float:
        return self.breaker.reopens_at()

    def ready_at(self) -> float:
        """Clock time before which a throttled (429) attempt should not be sent here again."""
        return self.limiter.ready_at()

    @property
    def concurrency_limit(self) -> int:
        return self.limiter.limit

    @property
    def inflight(self) -> int:
        """Attempts holding one of its slots right now."""
        return self.limiter.inflight

    def dispatched(self) -> None:
        """The pool chose this endpoint for the next attempt (a half-open probe, maybe)."""
        self.breaker.on_dispatch()

    # -- attempts ---------------------------------------------------------------------------
    def attempt(
        self,
        request: ChatRequest,
        *,
        deadline: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        priority: int = 0,
    ) -> Attempt:
        """One attempt of ``request``, to be used as ``async with``; see the module docs.

        ``clock`` bounds the wait for budget and slot against ``deadline``; the start
        the limiter measures latency from is the instant it counted the slot (its own
        clock, handed back by ``try_take``/``acquire``), never read again here.
        ``priority`` orders it among the attempts queued for a slot (lower first).
        """
        if self.scraper is not None:
            self.scraper.ensure_started()  # needs the running loop: the first attempt has it
        return Attempt(
            self, request, deadline=deadline, clock=clock, sleep=sleep, priority=priority
        )

    async def aclose(self) -> None:
        if self.scraper is not None:
            await self.scraper.aclose()
        await self.transport.aclose()


class AttemptStatus(enum.Enum):
    #: Budget reserved and a slot held: send it.
    READY = "ready"
    #: The deadline would pass while waiting for budget or a slot: nothing was sent.
    OUT_OF_TIME = "out_of_time"


class Attempt:
    """The life of one HTTP attempt on one endpoint (make it with :meth:`Endpoint.attempt`).

    After entering, ``status`` says whether it may be sent and ``queued`` whether it
    had to wait for a slot (then the endpoint may have gone bad meanwhile: the caller
    may leave the block unsent and choose again). Use from one event loop.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        request: ChatRequest,
        *,
        deadline: float,
        clock: Clock,
        sleep: Sleep,
        priority: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.priority = priority
        self.status = AttemptStatus.OUT_OF_TIME
        self.queued = False
        self._request = request
        self._deadline = deadline
        self._clock = clock
        self._sleep = sleep
        self._reservation: Reservation = NO_RESERVATION
        self._holds_slot = False
        self._sent = False
        self._settled = False  # the controls have heard how this attempt ended
        self._started = 0.0

    async def __aenter__(self) -> Attempt:
        try:
            ready = await self._reserve_budget() and await self._take_slot()
        except BaseException:  # cancelled while waiting: leave nothing behind
            self._undo()
            raise
        if ready:
            self.status = AttemptStatus.READY
        else:
            self._undo()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._undo()  # a no-op when send() already settled the attempt

    # -- before sending -------------------------------------------------------------------
    def _remaining(self) -> float:
        return self._deadline - self._clock()

    async def _reserve_budget(self) -> bool:
        rate = self.endpoint.rate
        if not rate.active:
            return True
        self._reservation = rate.reserve(estimate_tokens(self._request))
        wait = self._reservation.wait_s
        if wait <= 0:
            return True
        if wait >= self._remaining():
            return False
        await self._sleep(wait)
        return True

    async def _take_slot(self) -> bool:
        limiter = self.endpoint.limiter
        taken = limiter.try_take()
        if taken is not None:
            self._started = taken  # the limiter's instant: its cohorts are matched by it
        else:
            self.queued = True
            try:
                self._started = await limiter.acquire(
                    priority=self.priority, timeout_s=max(self._remaining(), 0.0)
                )
            except TimeoutError:
                return False
        self._holds_slot = True
        return True

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.endpoint.limiter.release()

    def _undo(self) -> None:
        """Never reached the server: free the slot, the reservation and any probe claim."""
        if self._settled:
            return
        self._settled = True
        self._release_slot()
        self.endpoint.breaker.on_abandoned()
        if self._reservation is not NO_RESERVATION:
            self.endpoint.rate.cancel(self._reservation)
            self._reservation = NO_RESERVATION

    # -- on the wire ----------------------------------------------------------------------
    async def send(self, request: ChatRequest) -> ChatResult:
        """Send ``request`` (the attempt's request, its timeout maybe cut to the deadline).

        Raises the transport's :class:`LLMError`; either way the outcome has been fed
        to the endpoint's controls and the slot given back when this returns.
        """
        if self.status is not AttemptStatus.READY or self._sent:
            raise RuntimeError("an attempt is sent once, and only when READY")
        self._sent = True
        mark_on_wire()  # the record now holds work on the server (see llm/onwire.py)
        try:
            result = await self.endpoint.transport.chat(request)
        except LLMError as exc:
            self._release_slot()
            self._failed(exc)
            raise
        except BaseException:  # cancelled on the wire: no verdict about the server
            self._undo()
            raise
        self._release_slot()
        self._succeeded(result)
        return result

    def _succeeded(self, result: ChatResult) -> None:
        self._settled = True
        ep = self.endpoint
        ep.limiter.on_success(self._started)  # the grant time: the limiter measures latency
        ep.breaker.on_success()
        if ep.rate.active:
            ep.rate.observe(result.headers)
            if result.usage.known:  # else the estimate stands
                ep.rate.settle(self._reservation, result.usage.total_tokens)

    def _failed(self, exc: LLMError) -> None:
        self._settled = True
        ep = self.endpoint
        if exc.retryable:
            ep.breaker.on_failure()
            if is_overload(exc):
                retry_after = exc.retry_after_s if isinstance(exc, APIStatusError) else None
                ep.limiter.on_overload(self._started, retry_after_s=retry_after)
        else:
            # The server answered (400, 401, ...): it is alive, whatever it thinks of us.
            ep.breaker.on_success()
        if ep.rate.active:
            ep.rate.cancel(self._reservation)
            if isinstance(exc, APIStatusError):
                ep.rate.observe(exc.headers)
