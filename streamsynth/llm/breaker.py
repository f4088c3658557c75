"""A circuit breaker per endpoint.

Closed: requests flow; ``failure_threshold`` *consecutive* retryable failures open
it. Open: no request is sent until ``reset_s`` has passed. Then half-open: exactly
one probe goes through; its success closes the circuit, its failure reopens it for
another ``reset_s``. Any answer that proves the server is alive (a success, or a
non-retryable error such as 400) resets the failure count.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        endpoint: str,
        *,
        failure_threshold: int,
        reset_s: float,
        observer: LLMObserver = NULL_OBSERVER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_s > 0")
        self.endpoint = endpoint
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._observer = observer
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_inflight = False

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def reopens_at(self) -> float:
        """When an open circuit admits its probe (the clock's time scale)."""
        return self._opened_at + self.reset_s

    def available(self, now: float | None = None) -> bool:
        """Would a request be admitted now? (Does not change state.)"""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.HALF_OPEN:
            return not self._probe_inflight
        now = self._clock() if now is None else now
        return now >= self.reopens_at()

    def on_dispatch(self) -> None:
        """A request was admitted (after :meth:`available` said so)."""
        if self._state is CircuitState.CLOSED:
            return
        # Open and past reset_s, or half-open without a probe: this request is the probe.
        self._state = CircuitState.HALF_OPEN
        self._probe_inflight = True

    def on_success(self) -> None:
        """The server answered (2xx, or an error a retry cannot fix)."""
        self._failures = 0
        if self._state is not CircuitState.CLOSED:
            self._state = CircuitState.CLOSED
            self._probe_inflight = False
            self._observer.on_circuit(endpoint=self.endpoint, open=False)

    def on_failure(self) -> None:
        """A retryable failure (5xx, 429, timeout, connection, malformed body)."""
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN:
            self._open()
        elif self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold:
            self._open()
            self._observer.on_circuit(endpoint=self.endpoint, open=True)

    def on_abandoned(self) -> None:
        """The probe ended without a verdict (cancelled): let another request probe."""
        if self._state is CircuitState.HALF_OPEN:
            self._probe_inflight = False

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._probe_inflight = False
