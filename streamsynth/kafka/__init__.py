"""The Kafka worker: consumer group -> stages -> output topics, at least once.

Modules: ``runtime`` (the process: signals, metrics server, exit codes),
``worker`` (the flow, rebalances, shutdown), ``inflight`` (partition states and
the bounded in-flight window), ``processing`` (a record through its stages),
``routing`` (outcomes -> messages to publish),
``offsets`` (commit tracking), ``records`` (decode/validate/build), ``dlq``
(dead-letter headers), ``source`` (consumer), ``sink`` (producer),
``connection`` (every aiokafka client is built there), ``admin`` (topics,
committed offsets, lag).

Exports are imported lazily: both process entries import this package before
they capture early signals, so it must not pull in aiokafka or the LLM stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamsynth.kafka.offsets import OffsetTracker
    from streamsynth.kafka.runtime import arun_worker, run_worker
    from streamsynth.kafka.worker import StageSpec, Worker, stage_specs

_EXPORTS = {
    "OffsetTracker": "streamsynth.kafka.offsets",
    "StageSpec": "streamsynth.kafka.worker",
    "Worker": "streamsynth.kafka.worker",
    "arun_worker": "streamsynth.kafka.runtime",
    "stage_specs": "streamsynth.kafka.worker",
    "run_worker": "streamsynth.kafka.runtime",
}

__all__ = ["OffsetTracker", "StageSpec", "Worker", "arun_worker", "run_worker", "stage_specs"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
