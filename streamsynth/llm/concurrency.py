"""A concurrency bound per endpoint, shared by every stage and batch of the worker.

A request holds a slot only while one HTTP attempt is on the wire: the retry loop
acquires a slot per attempt and releases it before sleeping in backoff, so a row
waiting to retry never starves the others (NeMo Curator holds its semaphore for
the whole retry loop, backoff included).

The limit adapts (AIMD, as TCP congestion control does): an overload signal (429,
503, a timeout) halves it, at most once per round trip -- only a failure of an
attempt that *started after* the previous decrease counts, so a burst of 429s from
one window of requests is one signal, not fifty. Each success adds ``1/limit``, so
the limit grows by about one per window of successes, back up to ``max_limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver

Clock = Callable[[], float]


class AdaptiveLimiter:
    """An asyncio semaphore whose size moves between ``min_limit`` and ``max_limit``.

    Waiters are served first come, first served. Not thread-safe: one event loop.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        max_limit: int,
        min_limit: int = 1,
        adaptive: bool = True,
        decrease_factor: float = 0.5,
        observer: LLMObserver = NULL_OBSERVER,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        if not 0.0 < decrease_factor < 1.0:
            raise ValueError("decrease_factor must be in (0, 1)")
        self.endpoint = endpoint
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.adaptive = adaptive
        self._factor = decrease_factor
        self._observer = observer
        self._clock = clock
        self._limit_f = float(max_limit)
        self._limit = max_limit
        self._inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_decrease = float("-inf")
        observer.on_concurrency_limit(endpoint=endpoint, limit=max_limit)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        # Granted waiters are popped and cancelled ones removed, so the deque is exact.
        return len(self._waiters)

    def load(self) -> float:
        """Slots in use and queued over the limit (above 1 means a queue); for routing."""
        return (self._inflight + len(self._waiters)) / self._limit

    # -- slots --------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued (the fast path: no await)."""
        if self._inflight < self._limit and not self._waiters:
            self._take()
            return True
        return False

    async def acquire(self) -> float:
        """Take a slot, queueing if needed; returns the clock time it was granted.

        Bound the wait with ``asyncio.timeout`` around the call.
        """
        if self.try_acquire():
            return self._clock()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted and cancelled at once: hand the slot on instead of leaking it.
                self.release()
            else:
                # Never granted: drop the future now, or waiting/load() would count it.
                self._discard(waiter)
            raise
        return self._clock()

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _take(self) -> None:
        self._inflight += 1
        self._observer.on_inflight(endpoint=self.endpoint, inflight=self._inflight)

    def release(self) -> None:
        self._inflight -= 1
        self._observer.on_inflight(endpoint=self.endpoint, inflight=self._inflight)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._inflight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    # -- adaptation ---------------------------------------------------------------------
    def on_success(self) -> None:
        if not self.adaptive or self._limit_f >= self.max_limit:
            return
        self._set(min(float(self.max_limit), self._limit_f + 1.0 / self._limit_f))

    def on_overload(self, attempt_started: float) -> bool:
        """An attempt started at ``attempt_started`` hit overload; True if the limit fell."""
        if not self.adaptive or attempt_started < self._last_decrease:
            return False
        self._last_decrease = self._clock()
        new = max(float(self.min_limit), self._limit_f * self._factor)
        if new == self._limit_f:
            return False
        self._set(new)
        return True

    def _set(self, value: float) -> None:
        self._limit_f = value
        limit = int(value)
        if limit != self._limit:
            self._limit = limit
            self._observer.on_concurrency_limit(endpoint=self.endpoint, limit=limit)
            self._wake()
