"""Model groups, prefix-affinity routing and priority, on the pool and limiter directly.

The end-to-end checks over HTTP (a replica killed mid-run, priorities on a saturated
group, the ``priority`` body field) are in test_model_groups.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from streamsynth.llm.breaker import CircuitBreaker
from streamsynth.llm.concurrency import AdaptiveLimiter
from streamsynth.llm.endpoint import Endpoint
from streamsynth.llm.groups import affinity_key
from streamsynth.llm.pool import EndpointPool
from streamsynth.llm.ratelimit import RateLimiter
from streamsynth.llm.types import ChatRequest, ChatResult


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _NoTransport:
    async def chat(self, request: ChatRequest) -> ChatResult:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        return None


def _endpoint(url: str, clock: Clock, limit: int = 4) -> Endpoint:
    return Endpoint(
        url=url,
        transport=_NoTransport(),
        limiter=AdaptiveLimiter(url, max_limit=limit, adaptive=False, clock=clock),
        breaker=CircuitBreaker(url, failure_threshold=1, reset_s=5.0, clock=clock),
        rate=RateLimiter(url, learn=False, clock=clock),
    )


def _pool(n: int, clock: Clock, limit: int = 4) -> EndpointPool:
    endpoints = [_endpoint(f"http://r{i}:8000/v1", clock, limit) for i in range(n)]
    return EndpointPool(endpoints, cooldown_s=0.0, routing="prefix_affinity", clock=clock)


KEYS = [f"model\0stage-{i}\0system prompt {i}" for i in range(64)]


def test_a_key_always_goes_home_and_keys_spread_over_replicas() -> None:
    clock = Clock()
    pool = _pool(4, clock)
    for key in KEYS:
        # Idle pool: every request of a key lands on its home, every time.
        assert {pool.choose(key=key).url for _ in range(5)} == {pool.home_of(key).url}
    homes = Counter(pool.home_of(k).url for k in KEYS)
    assert len(homes) == 4 and min(homes.values()) >= 8  # 64 keys, none starved
    # The hash is stable: a pool of the same URLs (another process, a restart) agrees.
    again = _pool(4, Clock())
    assert all(again.home_of(k).url == pool.home_of(k).url for k in KEYS)


def test_least_loaded_routing_ignores_the_key() -> None:
    clock = Clock()
    pool = _pool(4, clock)
    pool.routing = "least_loaded"
    chosen = []
    for _ in range(4):
        ep = pool.choose(key=KEYS[0])
        assert ep.limiter.try_acquire()
        chosen.append(ep.url)
    assert len(set(chosen)) == 4  # one each: the key did not pin anything


def test_a_full_home_spills_to_the_keys_second_replica_beyond_its_share() -> None:
    clock = Clock()
    pool = _pool(4, clock, limit=2)
    key = KEYS[0]
    home, second = pool.ranking(key)[:2]
    assert home is pool.home_of(key)
    assert home.limiter.try_acquire() and home.limiter.try_acquire()  # home full
    assert pool.choose(key=key) is second  # the others are idle: spill, and always there
    assert pool.choose(key=key) is second
    # Every replica as busy as home: home's share is not exceeded, it stays home (its
    # queue is where the prefix is cached).
    for ep in pool.endpoints:
        while ep.limiter.try_acquire():
            pass
    assert pool.choose(key=key) is home


def test_a_lone_hot_key_fills_every_replica_in_its_ranking_order() -> None:
    # One stage is the common deployment: its overflow must reach the whole fleet, not
    # queue on two replicas while the others idle.
    clock = Clock()
    pool = _pool(4, clock, limit=2)
    key = KEYS[0]
    taken: list[Any] = []
    # 7 of the fleet's 8 slots: the last may stay home (its share: 1.25 x the mean load).
    for _ in range(7):
        ep = pool.choose(key=key)
        assert ep.limiter.try_acquire(), f"sent to full {ep.url} after {[e.url for e in taken]}"
        taken.append(ep)
    ranking = pool.ranking(key)
    assert taken == [ep for ep in ranking for _ in range(2)][:7]  # in the key's order


def test_an_open_circuit_moves_only_its_keys_and_they_come_back() -> None:
    clock = Clock()
    pool = _pool(4, clock)
    before = {k: pool.choose(key=k) for k in KEYS}
    dead = pool.endpoints[1]
    dead.breaker.on_failure()  # threshold 1: open for 5 s
    during = {k: pool.choose(key=k) for k in KEYS}
    moved = {k for k in KEYS if during[k] is not before[k]}
    assert moved == {k for k in KEYS if before[k] is dead}  # only the dead replica's keys
    assert all(during[k] is not dead for k in KEYS)
    clock.now += 6.0  # reset elapsed: half-open, admits a probe
    probe_key = next(k for k in KEYS if before[k] is dead)
    assert pool.choose(key=probe_key) is dead
    dead.breaker.on_success()  # the probe answered: closed
    assert {k: pool.choose(key=k) for k in KEYS} == before


def test_affinity_key_is_the_stage_and_its_system_prompt() -> None:
    def req(stage: str, system: str | None, doc: str) -> ChatRequest:
        msgs: list[dict[str, str]] = (
            [] if system is None else [{"role": "system", "content": system}]
        )
        msgs.append({"role": "user", "content": f"Rewrite: {doc}"})
        return ChatRequest(model="m", messages=tuple(msgs), stage=stage)  # type: ignore[arg-type]

    assert affinity_key(req("qa", "S", "one")) == affinity_key(req("qa", "S", "two"))
    assert affinity_key(req("qa", "S", "one")) != affinity_key(req("para", "S", "one"))
    assert affinity_key(req("qa", "S", "one")) != affinity_key(req("qa", "T", "one"))
    assert affinity_key(req("", None, "one")) is None  # nothing shared: least loaded


def test_the_next_free_slot_goes_to_the_lowest_priority_first_come_within_one() -> None:
    async def scenario() -> list[str]:
        limiter = AdaptiveLimiter("x", max_limit=1, adaptive=False)
        assert limiter.try_acquire()
        order: list[str] = []

        async def waiter(name: str, priority: int) -> None:
            await limiter.acquire(priority=priority)
            order.append(name)
            limiter.release()

        tasks = []
        for name, prio in (
            ("bulk-1", 10),
            ("bulk-2", 10),
            ("fast-1", 0),
            ("mid", 5),
            ("fast-2", 0),
        ):
            tasks.append(asyncio.ensure_future(waiter(name, prio)))
            await asyncio.sleep(0)  # queued in this order
        assert limiter.waiting == 5
        limiter.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["fast-1", "fast-2", "mid", "bulk-1", "bulk-2"]


def test_a_cancelled_priority_waiter_leaves_nothing_behind() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter("x", max_limit=1, adaptive=False)
        assert limiter.try_acquire()
        task = asyncio.ensure_future(limiter.acquire(priority=3))
        await asyncio.sleep(0)
        assert limiter.waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limiter.waiting == 0
        limiter.release()
        assert limiter.try_acquire()  # the slot came back

    asyncio.run(scenario())
