"""Requests-per-minute and tokens-per-minute budgets per endpoint.

Two token buckets, refilled continuously at ``limit / 60`` per second and holding at
most one minute's worth. A request reserves one request and its *estimated* tokens
before it is sent (prompt characters / 4, plus ``max_tokens`` per choice: what the
server may count against the budget), then the reservation is corrected with the
usage the server reported. A bucket may go negative: later requests wait for the
debt to refill, in arrival order, without polling.

Limits come from the config (``rpm``/``tpm``), or -- when ``learn_rate_limits`` is
on and the config leaves one unset -- from the ``x-ratelimit-limit-requests`` /
``-tokens`` headers. ``x-ratelimit-remaining-*`` is the server's own count: a bucket
that believes it holds more than that is lowered to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver
from streamsynth.llm.types import ChatRequest

Clock = Callable[[], float]
_CHARS_PER_TOKEN = 4


def estimate_tokens(request: ChatRequest) -> int:
    """What a request may count against a TPM budget, before its usage is known."""
    prompt = request.prompt_chars() // _CHARS_PER_TOKEN + 1
    completion = (request.config.max_tokens or 0) * request.config.n
    return prompt + completion


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity / period_s`` per second."""

    def __init__(self, capacity: float, *, period_s: float = 60.0, clock: Clock = time.monotonic):
        if capacity <= 0 or period_s <= 0:
            raise ValueError("capacity and period_s must be > 0")
        self._clock = clock
        self._period_s = period_s
        self.capacity = float(capacity)
        self._rate = self.capacity / period_s
        self._tokens = self.capacity
        self._stamp = clock()

    @property
    def rate_per_s(self) -> float:
        return self._rate

    def tokens(self) -> float:
        """The current level (negative while reservations are in debt)."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now; returns the seconds to wait before using it (0 if available)."""
        self._refill()
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def refund(self, amount: float) -> None:
        """Give back (positive) or charge more (negative) after the fact."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens + amount)

    def set_capacity(self, capacity: float) -> None:
        """A new limit; the current level is kept (capped at the new capacity)."""
        self._refill()
        self.capacity = float(capacity)
        self._rate = self.capacity / self._period_s
        self._tokens = min(self._tokens, self.capacity)

    def clamp(self, remaining: float) -> None:
        """The server says only ``remaining`` are left: never believe in more."""
        self._refill()
        self._tokens = min(self._tokens, remaining)


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Reservation:
    """What :meth:`RateLimiter.reserve` took, so that it can be corrected or given back."""

    wait_s: float
    requests: int
    tokens: int


NO_RESERVATION = Reservation(0.0, 0, 0)


class RateLimiter:
    """RPM and TPM buckets of one endpoint; either may be absent (no limit)."""

    def __init__(
        self,
        endpoint: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        learn: bool = True,
        observer: LLMObserver = NULL_OBSERVER,
        clock: Clock = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._clock = clock
        self._observer = observer
        self._learn_rpm = learn and rpm is None
        self._learn_tpm = learn and tpm is None
        self.requests: TokenBucket | None = TokenBucket(rpm, clock=clock) if rpm else None
        self.tokens: TokenBucket | None = TokenBucket(tpm, clock=clock) if tpm else None

    @property
    def active(self) -> bool:
        """False when there is nothing to enforce and nothing to learn (the fast path)."""
        return bool(self.requests or self.tokens or self._learn_rpm or self._learn_tpm)

    def reserve(self, estimated_tokens: int) -> Reservation:
        """Reserve one request and ``estimated_tokens``; says how long to wait first."""
        wait = 0.0
        requests = tokens = 0
        if self.requests is not None:
            wait = self.requests.reserve(1)
            requests = 1
        if self.tokens is not None:
            wait = max(wait, self.tokens.reserve(estimated_tokens))
            tokens = estimated_tokens
        return Reservation(wait, requests, tokens)

    def cancel(self, reservation: Reservation) -> None:
        """The reserved request was never answered: give its budget back."""
        if self.requests is not None and reservation.requests:
            self.requests.refund(reservation.requests)
        if self.tokens is not None and reservation.tokens:
            self.tokens.refund(reservation.tokens)

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the up-front estimate with the usage the server reported."""
        if self.tokens is not None:
            # A bucket learned after the reservation was made charges the full usage.
            self.tokens.refund(reservation.tokens - actual_tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn limits and remaining budget from ``x-ratelimit-*`` response headers."""
        if not headers:
            return
        lowered = {k.lower(): v for k, v in headers.items() if k[:2] in ("x-", "X-")}
        limit_req = _header_float(lowered, "x-ratelimit-limit-requests")
        limit_tok = _header_float(lowered, "x-ratelimit-limit-tokens")
        if limit_req and self._learn_rpm:
            self.requests = self._learned(self.requests, limit_req)
        if limit_tok and self._learn_tpm:
            self.tokens = self._learned(self.tokens, limit_tok)
        remaining_req = _header_float(lowered, "x-ratelimit-remaining-requests")
        remaining_tok = _header_float(lowered, "x-ratelimit-remaining-tokens")
        if remaining_req is not None and self.requests is not None:
            self.requests.clamp(remaining_req)
        if remaining_tok is not None and self.tokens is not None:
            self.tokens.clamp(remaining_tok)
        if remaining_req is not None or remaining_tok is not None:
            self._observer.on_rate_limit_remaining(
                endpoint=self.endpoint, requests=remaining_req, tokens=remaining_tok
            )

    def _learned(self, bucket: TokenBucket | None, limit: float) -> TokenBucket:
        if bucket is None:
            return TokenBucket(limit, clock=self._clock)
        if bucket.capacity != limit:
            bucket.set_capacity(limit)
        return bucket
