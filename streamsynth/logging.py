"""Structured logs: JSON lines (or plain text) with secrets scrubbed from every field.

Call :func:`configure_logging` once at start-up. Errors about one record carry its
coordinates as ``extra`` fields (see :func:`record_fields`), so a log search for
``topic``/``partition``/``offset`` finds the exact input that failed.

Secrets are removed by a filter on the handler, before any formatter runs, and by
the same filter on aiokafka's loggers (its DEBUG connection log prints the SASL
auth bytes), so even a handler someone else installs never sees them. What counts
as a secret is decided in one place, :mod:`streamsynth.redact`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from streamsynth.config import LoggingSettings
from streamsynth.redact import REDACTED, clear_secrets, redact, register_secret

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "clear_secrets",
    "configure_logging",
    "record_fields",
    "redact",
    "register_secret",
]

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_HANDLER_NAME = "streamsynth"
#: Third-party loggers whose records may carry credentials (aiokafka.conn logs auth bytes).
_GUARDED_LOGGERS = ("aiokafka", "aiokafka.conn")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


def record_fields(
    topic: str, partition: int, offset: int, stage: str | None = None, **more: Any
) -> dict[str, Any]:
    """``extra=`` for a log line about one input record (its Kafka coordinates)."""
    fields: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if stage is not None:
        fields["stage"] = stage
    fields.update(more)
    return fields


class RedactingFilter(logging.Filter):
    """Scrubs the message, its arguments, extra fields and the traceback in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in extra_fields(record).items():
            setattr(record, key, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def guard_third_party_loggers() -> None:
    """Put the redacting filter on aiokafka's loggers themselves (once each).

    A logger's filters run for the records created on it, before any handler, so
    its DEBUG auth lines are scrubbed whatever handlers the application installs.
    """
    names = set(_GUARDED_LOGGERS) | {
        name for name in logging.root.manager.loggerDict if name.startswith("aiokafka.")
    }
    for name in sorted(names):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines; extra fields follow the message as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return line
        head, sep, tail = line.partition("\n")
        pairs = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{head} {pairs}{sep}{tail}"


def configure_logging(settings: LoggingSettings, stream: IO[str] | None = None) -> logging.Handler:
    """Route all logging to one redacting handler on ``stream`` (stderr by default).

    Calling it again replaces the handler it installed before, so tests and the
    CLI can reconfigure freely. Returns the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level)
    guard_third_party_loggers()
    # aiohttp logs every scrape at INFO; Prometheus scraping every second drowns the rest.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
