"""The Kafka worker: consumer group -> stages -> output topics, at least once.

Modules: ``offsets`` (commit tracking), ``records`` (decode/validate/build),
``dlq`` (dead-letter headers), ``source`` (consumer), ``sink`` (producer),
``worker`` (the flow, rebalances, shutdown).

Exports are imported lazily: ``python -m streamsynth.kafka`` must install its
signal handlers before the heavy imports (aiokafka, the LLM stack) run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamsynth.kafka.offsets import OffsetTracker
    from streamsynth.kafka.worker import (
        StageSpec,
        Worker,
        arun_worker,
        build_stages,
        run_worker,
    )

_EXPORTS = {
    "OffsetTracker": "streamsynth.kafka.offsets",
    "StageSpec": "streamsynth.kafka.worker",
    "Worker": "streamsynth.kafka.worker",
    "arun_worker": "streamsynth.kafka.worker",
    "build_stages": "streamsynth.kafka.worker",
    "run_worker": "streamsynth.kafka.worker",
}

__all__ = ["OffsetTracker", "StageSpec", "Worker", "arun_worker", "build_stages", "run_worker"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
