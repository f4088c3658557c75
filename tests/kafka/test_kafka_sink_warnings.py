"""The sink's retry warnings during an outage: one line per topic, error and interval."""

from __future__ import annotations

import logging

import pytest

from streamsynth.kafka.repeats import RepeatedWarning, RepeatFilter


def test_a_repeated_warning_is_one_line_with_its_count_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger("streamsynth.test.repeated")
    warning = RepeatedWarning(log, "publish failed, retrying", interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=log.name):
        for i in range(5_000):  # 5,000 failures over 45 s, as in an outage
            now[0] = i * 0.009
            warning.warn(("out", "KafkaConnectionError"), {"topic": "out"})
        warning.warn(("dlq", "KafkaConnectionError"), {"topic": "dlq"})  # another key: at once
        warning.flush()
    lines = [r for r in caplog.records if r.getMessage() == "publish failed, retrying"]
    # The first at once, one per 10 s after it (at 10, 20, 30, 40 s), the other key, the rest.
    assert 5 <= len(lines) <= 8, len(lines)
    out = [r for r in lines if getattr(r, "topic", None) == "out" or "key" in r.__dict__]
    assert sum(int(r.__dict__["repeated"]) for r in out) == 5_000
    assert lines[0].__dict__["repeated"] == 1


def test_aiokafka_floods_are_folded_on_the_handler() -> None:
    now = [0.0]
    folded = RepeatFilter(interval_s=10, clock=lambda: now[0])

    def record(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, (), None)

    passed = []
    for i in range(300):  # 30 s of "Unable connect" lines, ten a second
        now[0] = i * 0.1
        rec = record("aiokafka", logging.ERROR, "Unable connect to node with id 1")
        if folded.filter(rec):
            passed.append(rec)
    assert 3 <= len(passed) <= 4, len(passed)
    assert passed[0].__dict__.get("repeated") is None
    assert all(int(r.__dict__["repeated"]) >= 99 for r in passed[1:])
    # Another message, a lower level or our own loggers are never folded.
    assert folded.filter(record("aiokafka", logging.ERROR, "something else"))
    assert folded.filter(record("aiokafka", logging.INFO, "Unable connect to node with id 1"))
    for _ in range(3):
        assert folded.filter(record("streamsynth.kafka.worker", logging.WARNING, "x"))
