"""Several replicas of one model server, and which one gets the next attempt.

Two routings, among the endpoints whose circuit admits a request:

* ``least_loaded``: the endpoint with the lowest load (in-flight and queued
  requests over its concurrency limit).
* ``prefix_affinity`` (for requests with an affinity key: one stage's system
  prompt and template): the key's *home* replica by rendezvous hashing, so a
  stage's shared prompt prefix stays in one replica's prefix cache (vLLM then
  skips its prefill). When the home is full and loaded beyond its share
  (``share_slack`` x the mean load), the attempt spills to the key's second
  replica of the ranking (consistent hashing with bounded loads). A replica whose
  circuit opens drops out of every key's ranking, so only its own keys move (to
  their next-ranked replica), and they move back when it admits requests again.

An endpoint that just failed is cooled down for ``cooldown_s``: it is used only when
no other endpoint is admissible, and a retry avoids the endpoint of the attempt that
failed. When every circuit is open, :class:`CircuitOpenError` says when the first
one reopens.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Literal

from streamsynth.llm.endpoint import Endpoint
from streamsynth.llm.errors import AllCircuitsOpenError
from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver

__all__ = ["AllCircuitsOpenError", "Endpoint", "EndpointPool", "Routing"]

Routing = Literal["prefix_affinity", "least_loaded"]

#: A full home replica keeps its key's requests while its load is below this factor of
#: the pool's mean load (everyone busy: queue at home, where the prefix is cached).
SHARE_SLACK = 1.25
#: Rankings remembered (one per affinity key: stages x system prompts, a small set).
_MAX_RANKINGS = 4096


def _score(key: str, url: str) -> int:
    """Rendezvous weight of ``url`` for ``key``: stable across processes and restarts."""
    digest = hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class EndpointPool:
    """Routing only: which endpoint takes the next attempt (each endpoint keeps its own state)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        cooldown_s: float = 10.0,
        routing: Routing = "least_loaded",
        share_slack: float = SHARE_SLACK,
        name: str = "",
        observer: LLMObserver = NULL_OBSERVER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.cooldown_s = cooldown_s
        self.routing = routing
        self.share_slack = share_slack
        #: The model group's name (a metrics label).
        self.name = name
        self._observer = observer
        self._clock = clock
        self._single = self.endpoints[0] if len(self.endpoints) == 1 else None
        self._rankings: dict[str, list[Endpoint]] = {}

    def choose(self, avoid: Endpoint | None = None, key: str | None = None) -> Endpoint:
        """The endpoint for the next attempt (its circuit notified of the dispatch).

        ``key`` is the request's affinity key (see :func:`affinity_key`); without one,
        or with ``least_loaded`` routing, the least-loaded endpoint is chosen.
        """
        single = self._single
        if single is not None and single.admits():
            # The common deployment: skip the ranking entirely.
            route = "home" if key is not None else "least_loaded"
            self._observer.on_route(model_group=self.name, endpoint=single.url, route=route)
            single.dispatched()
            return single
        if key is not None and self.routing == "prefix_affinity":
            return self._affine(key, avoid)
        best = self._least_loaded(avoid, self._clock())
        self._observer.on_route(model_group=self.name, endpoint=best.url, route="least_loaded")
        best.dispatched()
        return best

    def home_of(self, key: str) -> Endpoint:
        """The replica ``key`` belongs to when every replica is healthy."""
        return self._ranking(key)[0]

    def ranking(self, key: str) -> list[Endpoint]:
        """The replicas in ``key``'s order of preference (home first, then its spill)."""
        return list(self._ranking(key))

    def _ranking(self, key: str) -> list[Endpoint]:
        ranked = self._rankings.get(key)
        if ranked is None:
            if len(self._rankings) >= _MAX_RANKINGS:
                self._rankings.clear()
            ranked = sorted(self.endpoints, key=lambda ep: _score(key, ep.url), reverse=True)
            self._rankings[key] = ranked
        return ranked

    def _affine(self, key: str, avoid: Endpoint | None) -> Endpoint:
        """The key's home: the first replica of its ranking that admits requests (and is
        healthy -- not cooling down, not the one to avoid -- when one is).

        A full home (no free slot) keeps the request while its load is below its share
        (``share_slack`` x the mean load, and at least 1): everyone is busy, and queueing
        where the prefix is cached beats a prefill elsewhere. Beyond it the request
        spills to the next replica of the key's ranking that is below that share (the
        second, while it has room), so a hot stage's overflow meets its prefix cached on
        as few replicas as its load needs, and a lone stage still fills the whole fleet
        (consistent hashing with bounded loads)."""
        now = self._clock()
        ranked = [ep for ep in self._ranking(key) if ep.admits(now)]
        if not ranked:
            raise self._all_open()
        healthy = [ep for ep in ranked if ep is not avoid and not ep.cooling(now)] or ranked
        chosen = home = healthy[0]
        if len(healthy) > 1 and home.load() >= 1.0:
            loads = [ep.load() for ep in healthy]
            bound = max(1.0, self.share_slack * sum(loads) / len(loads))
            if home.load() >= bound:
                below = (ep for ep in healthy[1:] if ep.load() < bound)
                chosen = next(below, min(healthy, key=lambda ep: ep.load()))
        route = "home" if chosen is home else "spill"
        self._observer.on_route(model_group=self.name, endpoint=chosen.url, route=route)
        chosen.dispatched()
        return chosen

    def _least_loaded(self, avoid: Endpoint | None, now: float) -> Endpoint:
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
            raise self._all_open()
        return best

    def _all_open(self) -> AllCircuitsOpenError:
        reopens = min(ep.reopens_at() for ep in self.endpoints)
        return AllCircuitsOpenError(
            f"all {len(self.endpoints)} endpoint circuits are open", reopens_at=reopens
        )

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
