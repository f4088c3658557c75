"""Event-loop lag: how late a sleep of ``interval_s`` wakes up.

A blocking call (JSON parsing a huge record, a sync tokenizer) delays every
coroutine; this gauge shows it long before throughput does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from streamsynth.metrics.registry import Metrics


class LoopLagMonitor:
    """Samples the running loop's lag into ``metrics.event_loop_lag`` every ``interval_s``."""

    def __init__(self, metrics: Metrics, interval_s: float = 0.5) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.metrics = metrics
        self.interval_s = interval_s
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="streamsynth-loop-lag"
            )

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval_s)
            lag = time.monotonic() - before - self.interval_s
            self.metrics.event_loop_lag.set(max(0.0, lag))
            self.samples += 1

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
