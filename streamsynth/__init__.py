"""streamsynth: turn a stream of documents into synthetic pretraining data.

The names most programs need, importable from the top::

    from streamsynth import Settings, load_settings, Worker, run_worker
    from streamsynth import SyntheticStage, BaseSyntheticStage, build_llm_client

They are imported on first use, not with the package: ``streamsynth run`` imports
this package before it captures early signals, so it must stay free of aiokafka
and the LLM stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from streamsynth.config import Settings, load_settings
    from streamsynth.kafka.runtime import run_worker
    from streamsynth.kafka.worker import Worker
    from streamsynth.llm.factory import build_llm_client
    from streamsynth.stages.synthetic import BaseSyntheticStage, SyntheticStage

_EXPORTS = {
    "Settings": "streamsynth.config",
    "load_settings": "streamsynth.config",
    "Worker": "streamsynth.kafka.worker",
    "run_worker": "streamsynth.kafka.runtime",
    "SyntheticStage": "streamsynth.stages.synthetic",
    "BaseSyntheticStage": "streamsynth.stages.synthetic",
    "build_llm_client": "streamsynth.llm.factory",
}

__all__ = [
    "BaseSyntheticStage",
    "Settings",
    "SyntheticStage",
    "Worker",
    "__version__",
    "build_llm_client",
    "load_settings",
    "run_worker",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
