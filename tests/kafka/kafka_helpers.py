"""The worker tests' helpers are the shared harness: :mod:`streamsynth.testing.harness`
(Topics, worker_config, WorkerProcess, produce, TopicReader, committed, ...)."""

from __future__ import annotations

from streamsynth.testing.harness import *  # noqa: F403  (this module only re-exports it)
