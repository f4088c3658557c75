"""Errors raised by the stage engine (the whole tree: :mod:`streamsynth.errors`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamsynth.errors import StreamsynthError

if TYPE_CHECKING:  # stage.py imports this module
    from streamsynth.engine.stage import LLMCall


class EngineError(StreamsynthError):
    """Base of the engine's errors."""

    error_type = "engine"


class MissingColumnError(EngineError, KeyError):
    """A stage was given a batch or record without a column it declared in ``inputs()``."""

    error_type = "missing_column"

    def __init__(self, stage: str, column: str, available: list[str] | None = None) -> None:
        self.stage = stage
        self.column = column
        have = f"; available: {', '.join(available)}" if available is not None else ""
        super().__init__(f"stage {stage!r} requires column {column!r}{have}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StageConfigError(EngineError, ValueError):
    """A stage was constructed with an invalid configuration."""

    error_type = "stage_config"


class PostProcessingError(EngineError):
    """A task's post-processing raised on an LLM answer."""

    error_type = "postprocess"


class InvalidOutputError(EngineError):
    """A structured answer stayed invalid (not JSON, or not matching the schema) after
    every re-ask; the message holds the last validation error."""

    error_type = "invalid_output"

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class TruncatedOutputError(EngineError):
    """The answer stopped at ``max_tokens`` (``finish_reason: length``) and the stage's
    ``on_truncated`` is ``dlq``. ``call`` is what that answer cost (it was generated)."""

    error_type = "truncated"

    def __init__(self, message: str, *, attempts: int = 0, call: LLMCall | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.call = call
