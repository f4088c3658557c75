"""Event-loop lag shows up in the gauge when something blocks the loop."""

from __future__ import annotations

import asyncio
import time

from streamsynth.metrics.loop_lag import LoopLagMonitor
from streamsynth.metrics.registry import Metrics


async def test_blocking_call_is_measured() -> None:
    m = Metrics()
    monitor = LoopLagMonitor(m, interval_s=0.02)
    monitor.start()
    try:
        await asyncio.sleep(0)  # let the sampler start its first sleep
        time.sleep(0.3)  # noqa: ASYNC251  -- blocking the loop is what is measured
        for _ in range(200):  # bounded: at most ~2 s
            if monitor.samples >= 1:
                break
            await asyncio.sleep(0.01)
        lag = m.registry.get_sample_value("streamsynth_event_loop_lag_seconds")
        assert lag is not None and lag >= 0.25
        # Once the loop is free again, later samples come back small.
        seen = monitor.samples
        for _ in range(200):
            if monitor.samples >= seen + 2:
                break
            await asyncio.sleep(0.01)
        lag = m.registry.get_sample_value("streamsynth_event_loop_lag_seconds")
        assert lag is not None and lag < 0.2
    finally:
        await monitor.stop()
