"""Dead-letter records after KIP-1034: the original key and value, error headers.

The value and key bytes are the input's, unchanged, so a fixed pipeline can
replay the DLQ as it is. The headers say what failed and where:

====================================  ==========================================
``streamsynth.error.class``           exception type name, or ``BadRecord.<reason>``
``streamsynth.error.reason``          a short bounded label (metrics use it too)
``streamsynth.error.message``         truncated, with anything secret-shaped removed
``streamsynth.error.stage``           the stage that failed (``decode`` for bad input)
``streamsynth.error.topic``           source topic
``streamsynth.error.partition``       source partition
``streamsynth.error.offset``          source offset
``streamsynth.error.attempts``        LLM attempts spent on the record by that stage
====================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from streamsynth.errors import StreamsynthError
from streamsynth.kafka.records import BadRecord
from streamsynth.redact import scrub as _scrub

HEADER_PREFIX: Final = "streamsynth.error."
#: Messages are cut to this many characters: a header is not a log file.
MAX_MESSAGE_CHARS: Final = 512
#: The stage name used for records rejected before any stage ran.
DECODE_STAGE: Final = "decode"


def scrub(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` with anything secret-shaped removed, then cut to ``limit`` characters."""
    return _scrub(message, limit)


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one record in one stage (or before any stage)."""

    error_class: str
    reason: str
    message: str
    stage: str
    attempts: int = 0

    @classmethod
    def from_bad_record(cls, bad: BadRecord) -> Failure:
        return cls(bad.error_class, bad.reason, bad.message, DECODE_STAGE, 0)

    @classmethod
    def from_exception(cls, exc: BaseException, *, stage: str) -> Failure:
        return cls(
            type(exc).__name__,
            error_reason(exc),
            str(exc) or type(exc).__name__,
            stage,
            int(getattr(exc, "attempts", 0) or 0),
        )


def error_reason(exc: BaseException) -> str:
    """A bounded label: the ``error_type`` of our errors, else the class name (a bug's)."""
    if isinstance(exc, StreamsynthError):
        return exc.error_type
    return type(exc).__name__


def dlq_headers(
    failure: Failure, *, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The KIP-1034 headers of a dead-letter record."""
    fields = (
        ("class", failure.error_class),
        ("reason", failure.reason),
        ("message", scrub(failure.message)),
        ("stage", failure.stage),
        ("topic", topic),
        ("partition", str(partition)),
        ("offset", str(offset)),
        ("attempts", str(failure.attempts)),
    )
    return [(HEADER_PREFIX + name, value.encode("utf-8", "replace")) for name, value in fields]


def header_map(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Headers as a str dict (for tests and tools reading the DLQ)."""
    return {k: v.decode("utf-8", "replace") for k, v in headers}
