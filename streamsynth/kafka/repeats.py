"""Repeated warnings, folded: one line per kind and interval, with how many it stands for.

In a broker outage the same warning repeats thousands of times a minute: the
sink's per-message retry warning, and aiokafka's own "Unable connect to node"
ERROR lines (about ten a second). :class:`RepeatedWarning` folds a warning we log
ourselves, by a key we choose; :class:`RepeatFilter` folds third-party records
on the log handler, keyed by logger, level and message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

#: A repeated warning is logged once per this many seconds.
WARNING_INTERVAL_S = 10.0


class RepeatedWarning:
    """One warning line per key and interval, saying how many it stands for.

    The first occurrence of a key is logged at once (an outage shows up without
    delay); later ones within ``interval_s`` are only counted, and the next line
    carries ``repeated``: how many occurrences it stands for since the last line.
    """

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        interval_s: float = WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._message = message
        self._interval_s = interval_s
        self._clock = clock
        #: key -> [time of the last line, occurrences since it]
        self._seen: dict[tuple[str, ...], list[float]] = {}

    def warn(self, key: tuple[str, ...], extra: dict[str, Any]) -> None:
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = [now, 0]
            self._log.warning(self._message, extra={**extra, "repeated": 1})
            return
        seen[1] += 1
        if now - seen[0] >= self._interval_s:
            self._log.warning(
                self._message,
                extra={**extra, "repeated": int(seen[1]), "interval_s": self._interval_s},
            )
            seen[0], seen[1] = now, 0

    def flush(self) -> None:
        """Log what was counted since the last line of each key (at shutdown)."""
        for key, (_, count) in self._seen.items():
            if count:
                self._log.warning(self._message, extra={"key": list(key), "repeated": int(count)})
        self._seen.clear()


class RepeatFilter(logging.Filter):
    """Folds identical WARNING+ records of loggers under ``prefixes`` (a handler filter).

    The first of a kind passes at once; repeats within ``interval_s`` are dropped and
    counted; the next one past the interval passes with ``repeated`` set to the count.
    Records below WARNING, and other loggers' records, always pass.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka",),
        *,
        interval_s: float = WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) > 1000:  # bounded: many distinct messages are no flood
                self._seen.clear()
            self._seen[key] = [now, 0]
            return True
        seen[1] += 1
        if now - seen[0] < self._interval_s:
            return False
        record.repeated = int(seen[1])
        seen[0], seen[1] = now, 0
        return True
