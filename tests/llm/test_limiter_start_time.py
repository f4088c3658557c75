"""The instant an attempt reports as its start is the instant the limiter counted it.

A window's cohort is the attempts taken between its ``settled_at`` and its
``cohort_end``; an attempt that reads the clock again after taking its slot (or when
its queued task resumes) reports a later start, outside the cohort, so the cohort
never completes and every window waits for its lost-cohort timeout instead of
deciding after one round trip. Fake clocks that stand still cannot show this: these
use one that moves on every read, as a real one does.
"""

from __future__ import annotations

import asyncio

from streamsynth.llm.concurrency import AdaptiveLimiter


class TickingClock:
    """Moves forward a microsecond on every read."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


def test_windows_decide_after_a_round_trip_on_a_clock_that_moves_on_every_read() -> None:
    clock = TickingClock()
    limiter = AdaptiveLimiter("e", max_limit=1024, initial_limit=32, clock=clock)
    limits = {limiter.limit}
    # A closed loop that keeps every slot busy: each answer's slot is taken again at once.
    in_flight = [limiter.try_take() for _ in range(limiter.limit)]
    for _ in range(2_000):
        started = in_flight.pop(0)
        assert started is not None
        limiter.on_success(started)
        limiter.release()
        while (taken := limiter.try_take()) is not None:
            in_flight.append(taken)
        limits.add(limiter.limit)
    # The whole run spans milliseconds, far less than any lost-cohort timeout: only
    # complete cohorts can have moved the limit (the start-up ramp doubles it).
    assert clock.now - 1000.0 < 0.1
    assert max(limits) > 32


async def test_a_queued_acquire_returns_when_its_slot_was_taken_not_when_it_resumed() -> None:
    now = [0.0]
    limiter = AdaptiveLimiter("e", max_limit=1, adaptive=False, clock=lambda: now[0])
    assert limiter.try_take() == 0.0
    assert limiter.try_take() is None  # full
    queued = asyncio.get_running_loop().create_task(limiter.acquire())
    for _ in range(100):  # bounded: until the task has queued
        if limiter.waiting:
            break
        await asyncio.sleep(0)
    assert limiter.waiting == 1
    now[0] = 5.0
    limiter.release()  # the slot is handed to the waiter now...
    now[0] = 7.0  # ...and its task resumes later
    assert await queued == 5.0
    assert limiter.inflight == 1
