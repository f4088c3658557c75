"""Shutdown under one deadline: every step within what is left of ``shutdown_timeout_s``.

In a broker outage each step of a shutdown can wait forever (aiokafka's commit waits
for a coordinator, the group leave for a broker, the producer's flush for acks), and
the orchestrator then kills the process. The worker runs its steps in this order,
each bounded by what :class:`Deadline` has left:

1. drain: in-flight records may finish, for the budget minus a reserve kept for the
   rest (:meth:`Deadline.drain_s`), so a drain that runs out leaves them time;
2. the final commit of the finished prefix (in the worker's ``_release``);
3. leaving the consumer group, flushing and closing the producer, the stages'
   teardown, closing the LLM client (:meth:`Shutdown.stop_clients`).

A step that does not finish in time is abandoned and named (:meth:`Shutdown.abandon`);
:meth:`Shutdown.report` then logs one line with all of them and the worker exits
:data:`INCOMPLETE_EXIT_CODE`. Abandoning never commits anything: what was not
committed is redone by the next owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

#: Of ``shutdown_timeout_s``, this share (at most RESERVE_MAX_S) is kept from the drain.
RESERVE_SHARE = 0.2
RESERVE_MAX_S = 2.0
#: Every step gets at least this long, even when the budget is spent (a healthy
#: broker answers a commit or a leave in milliseconds).
MIN_STEP_S = 0.5
#: Exit status when a step was abandoned (the broker did not answer in time).
INCOMPLETE_EXIT_CODE = 1


class Stoppable(Protocol):
    """The source and the sink: ``stop`` returns False when it gave up at the timeout."""

    async def stop(self, timeout_s: float | None = None) -> bool: ...


class Deadline:
    """What is left of a time budget that started now."""

    def __init__(self, budget_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self.started = clock()
        self.ends_at = self.started + budget_s

    def left(self) -> float:
        """Seconds the next step may take (never below :data:`MIN_STEP_S`)."""
        return max(MIN_STEP_S, self.ends_at - self._clock())

    def elapsed(self) -> float:
        return self._clock() - self.started

    def drain_s(self) -> float:
        """The drain's share: the budget minus what the later steps are kept."""
        return self.budget_s - min(RESERVE_MAX_S, self.budget_s * RESERVE_SHARE)


class Shutdown:
    """One shutdown: its deadline and the steps it had to abandon."""

    def __init__(self, budget_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline = Deadline(budget_s, clock=clock)
        self.abandoned: list[str] = []

    def abandon(self, what: str) -> None:
        self.abandoned.append(what)

    async def step(self, what: str, awaitable: Awaitable[object]) -> bool:
        """Await ``awaitable`` within what is left; False (and ``what`` abandoned) past it."""
        try:
            await asyncio.wait_for(awaitable, self.deadline.left())
        except TimeoutError:
            self.abandon(what)
            return False
        return True

    async def stop_clients(
        self, source: Stoppable, sink: Stoppable, teardown: Awaitable[object]
    ) -> None:
        """Leave the group, flush and close the producer, tear the stages down."""
        if not await source.stop(self.deadline.left()):
            self.abandon("leaving the consumer group (the broker did not answer)")
        if not await sink.stop(self.deadline.left()):
            self.abandon("the producer flush (unacknowledged records stay unfinished)")
        await self.step("the stages' teardown", teardown)

    def report(self, log: logging.Logger) -> bool:
        """Log the one line naming what was abandoned; True when something was."""
        if not self.abandoned:
            return False
        log.error(
            f"shutdown incomplete after {self.deadline.elapsed():.1f} s "
            f"(shutdown_timeout_s: {self.deadline.budget_s:g}); abandoned: "
            f"{'; '.join(self.abandoned)}. Nothing unfinished was committed: "
            "the next owner redoes it.",
            extra={"abandoned": self.abandoned},
        )
        return True
