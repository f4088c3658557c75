"""The worker tests' helpers: the shared harness (:mod:`streamsynth.testing.harness`)."""

from __future__ import annotations

from streamsynth.testing.harness import (
    Received,
    TopicReader,
    Topics,
    WorkerProcess,
    committed,
    custom_stage,
    doc,
    produce,
    unique,
    worker_config,
)

__all__ = [
    "Received",
    "TopicReader",
    "Topics",
    "WorkerProcess",
    "committed",
    "custom_stage",
    "doc",
    "produce",
    "unique",
    "worker_config",
]
