"""Several replicas of one model server, and which one gets the next attempt.

Each attempt goes to the least-loaded endpoint (in-flight and queued requests over
its concurrency limit) among those whose circuit admits a request. An endpoint that
just failed is cooled down for ``cooldown_s``: it is used only when no other endpoint
is admissible, and a retry avoids the endpoint of the attempt that failed. When
every circuit is open, :class:`CircuitOpenError` says when the first one reopens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from streamsynth.llm.endpoint import Endpoint
from streamsynth.llm.errors import AllCircuitsOpenError

__all__ = ["AllCircuitsOpenError", "Endpoint", "EndpointPool"]


class EndpointPool:
    """Routing only: which endpoint takes the next attempt (each endpoint keeps its own state)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._single = self.endpoints[0] if len(self.endpoints) == 1 else None

    def choose(self, avoid: Endpoint | None = None) -> Endpoint:
        """The endpoint for the next attempt (its circuit notified of the dispatch)."""
        single = self._single
        if single is not None and single.admits():
            # The common deployment: skip the ranking entirely.
            single.dispatched()
            return single
        now = self._clock()
        best: Endpoint | None = None
        best_rank: tuple[int, float] | None = None
        for ep in self.endpoints:
            if not ep.admits(now):
                continue
            # Rank: healthy before cooling/avoided, then by load.
            penalty = int(ep is avoid) + int(ep.cooling(now))
            rank = (penalty, ep.load())
            if best_rank is None or rank < best_rank:
                best, best_rank = ep, rank
        if best is None:
            reopens = min(ep.reopens_at() for ep in self.endpoints)
            raise AllCircuitsOpenError(
                f"all {len(self.endpoints)} endpoint circuits are open", reopens_at=reopens
            )
        best.dispatched()
        return best

    def still_suitable(self, endpoint: Endpoint) -> bool:
        """After queueing for a slot of ``endpoint``: is it still a good choice?

        Routing happens before the wait for a slot; meanwhile the endpoint may have
        failed. Then the attempt goes back to :meth:`choose` rather than being sent.
        """
        if self._single is not None:
            return True
        if endpoint.circuit_open():
            return False
        now = self._clock()
        if not endpoint.cooling(now):
            return True
        # Cooling down: fine only if no other endpoint is healthy and not cooling.
        return not any(
            ep is not endpoint and not ep.cooling(now) and ep.admits(now) for ep in self.endpoints
        )

    def cool_down(self, endpoint: Endpoint) -> None:
        if len(self.endpoints) > 1 and self.cooldown_s > 0:
            endpoint.cool_down(self._clock() + self.cooldown_s)

    def concurrency_limit(self) -> int:
        return sum(ep.concurrency_limit for ep in self.endpoints)

    def inflight(self) -> int:
        return sum(ep.inflight for ep in self.endpoints)

    async def aclose(self) -> None:
        for ep in self.endpoints:
            await ep.aclose()
