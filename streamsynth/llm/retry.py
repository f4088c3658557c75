"""When to retry a failed attempt, and how long to wait first.

Classification uses the exception's type only (its ``retryable`` class attribute,
set per HTTP status in :mod:`streamsynth.llm.errors`), never its message text:
408/409/429/5xx, connection errors, timeouts and malformed bodies are retried;
400/401/403/404/422 are not. Anything that is not an :class:`LLMError` is a bug or
a cancellation, and is never retried.

The wait is exponential backoff with full jitter, ``U(0, min(max, base * 2**(n-1)))``
(spreads a thundering herd of synchronized retries), raised to the server's
``Retry-After`` when it sent one: a server that names a time is never re-asked sooner.

Why a small loop (in :mod:`streamsynth.llm.resilient`) instead of tenacity: every
attempt must (1) take a concurrency slot and an endpoint, (2) get a timeout cut to
the request's remaining deadline, (3) wait at least Retry-After or until a circuit
reopens, and (4) end in our own typed error carrying the exact attempt count.
Tenacity can express each with custom wait/stop/retry callables, but the glue would
be longer than this module, and its per-call state objects sit on a hot path that
must sustain thousands of requests per second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from streamsynth.llm.errors import (
    APIStatusError,
    LLMError,
    LLMTimeoutError,
    RateLimitError,
    RequestTimeoutError,
)


def is_retryable(exc: BaseException) -> bool:
    """True for the error types a retry can fix (by class attribute, not message)."""
    return isinstance(exc, LLMError) and exc.retryable


def is_overload(exc: BaseException) -> bool:
    """Errors that mean "send less": they shrink the adaptive concurrency limit."""
    if isinstance(exc, RateLimitError | LLMTimeoutError | RequestTimeoutError):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code == 503


def server_wait_s(exc: BaseException) -> float | None:
    """The wait the server asked for (Retry-After / retry-after-ms), if any."""
    if isinstance(exc, APIStatusError):
        return exc.retry_after_s
    return None


@dataclass
class RetryPolicy:
    """Attempt budget and backoff. ``max_attempts`` counts HTTP attempts, the first included."""

    max_attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0
    deadline_s: float = 600.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_s < 0 or self.max_s < 0 or self.deadline_s <= 0:
            raise ValueError("base_s/max_s must be >= 0 and deadline_s > 0")

    def should_retry(self, exc: BaseException, attempts: int) -> bool:
        """Retry after ``attempts`` HTTP attempts ended in ``exc``?"""
        return attempts < self.max_attempts and is_retryable(exc)

    def backoff_cap_s(self, attempt: int) -> float:
        """Upper bound of the jittered wait after failed attempt number ``attempt`` (1-based)."""
        # min() before the power would overflow for huge attempt numbers.
        exponent = min(attempt - 1, 62)
        return float(min(self.max_s, self.base_s * (2**exponent)))

    def delay_s(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``: full jitter, >= Retry-After."""
        delay = self.rng.uniform(0.0, self.backoff_cap_s(attempt))
        floor = server_wait_s(exc) if exc is not None else None
        if floor is not None and floor > delay:
            return floor
        return delay
