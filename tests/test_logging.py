"""JSON/text log shape, record coordinates, and secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streamsynth.config import LoggingSettings
from streamsynth.logging import (
    REDACTED,
    clear_secrets,
    configure_logging,
    record_fields,
    redact,
    register_secret,
)


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(LoggingSettings(level="DEBUG", format="json"), stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        clear_secrets()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_shape_with_record_coordinates(capture: io.StringIO) -> None:
    log = logging.getLogger("streamsynth.kafka.worker")
    log.error(
        "stage failed: %s", "bad json", extra=record_fields("docs", 3, 1234, stage="diverse_qa")
    )
    (entry,) = _lines(capture)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "streamsynth.kafka.worker"
    assert entry["msg"] == "stage failed: bad json"
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("docs", 3, 1234)
    assert entry["stage"] == "diverse_qa"
    assert str(entry["ts"]).endswith("+00:00") and "T" in str(entry["ts"])


def test_exceptions_are_one_json_line(capture: io.StringIO) -> None:
    try:
        raise RuntimeError("kaputt")
    except RuntimeError:
        logging.getLogger("x").exception("while producing")
    (entry,) = _lines(capture)
    assert "RuntimeError: kaputt" in str(entry["exc"])


def test_level_is_applied() -> None:
    stream = io.StringIO()
    handler = configure_logging(LoggingSettings(level="WARNING"), stream)
    try:
        logging.getLogger("y").info("quiet")
        logging.getLogger("y").warning("loud")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [e["msg"] for e in _lines(stream)] == ["loud"]


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingSettings(), first)
    handler = configure_logging(LoggingSettings(format="text"), second)
    try:
        logging.getLogger("z").warning("once", extra={"topic": "t"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert first.getvalue() == ""
    line = second.getvalue().strip()
    assert "WARNING" in line and "z: once" in line and line.endswith("topic=t")


def test_registered_secrets_vanish_everywhere(capture: io.StringIO) -> None:
    api_key, sasl_password = "fake-api-key-3f9a1c", "s4sl-p4ssw0rd!"
    register_secret(api_key)
    register_secret(sasl_password)
    log = logging.getLogger("streamsynth.llm")
    log.warning("auth with %s failed", api_key, extra={"headers": {"x-key": api_key}})
    log.info("kafka config", extra={"sasl": ["user", sasl_password]})
    try:
        raise ValueError(f"password {sasl_password} rejected")
    except ValueError:
        log.exception("connect failed")
    text = capture.getvalue()
    assert api_key not in text and sasl_password not in text
    assert text.count(REDACTED) >= 4
    warning, info, error = _lines(capture)
    assert warning["headers"] == {"x-key": REDACTED}
    assert info["sasl"] == ["user", REDACTED]
    assert REDACTED in str(error["exc"])


@pytest.mark.parametrize(
    ("raw", "leaked"),
    [
        ("calling with sk-proj-AbC123xyz789qwe", "sk-proj-AbC123xyz789qwe"),
        ("Authorization: Bearer eyJhbGciOi.J9abc", "eyJhbGciOi.J9abc"),
        ('{"api_key": "abcd1234efgh"}', "abcd1234efgh"),
        ("sasl password=hunter22 ok", "hunter22"),
    ],
)
def test_common_key_shapes_are_redacted(raw: str, leaked: str) -> None:
    cleaned = redact(raw)
    assert leaked not in cleaned
    assert REDACTED in cleaned


def test_placeholders_and_short_values_are_not_secrets() -> None:
    register_secret("EMPTY")
    register_secret("ab")
    register_secret(None)
    try:
        assert redact("EMPTY ab cab") == "EMPTY ab cab"
    finally:
        clear_secrets()


def test_ordinary_text_is_untouched() -> None:
    text = "tokens: 512 in, 128 out; topic=docs partition=3 offset=99"
    assert redact(text) == text


def test_a_jwt_in_a_log_line_is_redacted(capture: io.StringIO) -> None:
    jwt = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
        ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    logging.getLogger("streamsynth.kafka").warning("token %s rejected", jwt, extra={"t": jwt})
    (entry,) = _lines(capture)
    assert "eyJ" not in capture.getvalue()
    assert entry["msg"] == f"token {REDACTED} rejected" and entry["t"] == REDACTED


#: Non-ASCII and backslashes: escaping prints this secret as other text.
SECRET = "Sé\\crêt-кл\\ю4"


@pytest.mark.parametrize(
    "printed",
    [
        SECRET,
        SECRET.replace("\\", "\\\\"),
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=False)[1:-1],
        repr(SECRET)[1:-1],
        ascii(SECRET)[1:-1],
        repr(SECRET.encode())[2:-1],
        json.dumps(repr(SECRET.encode()))[3:-2],
    ],
    ids=["raw", "backslashes", "json", "json-utf8", "repr", "ascii", "bytes", "json-of-bytes"],
)
def test_a_registered_secret_is_redacted_in_each_printed_form(printed: str) -> None:
    register_secret(SECRET)
    try:
        cleaned = redact(f"before {printed} after")
    finally:
        clear_secrets()
    assert cleaned == f"before {REDACTED} after"


def test_aiokafka_debug_auth_line_never_carries_the_sasl_password() -> None:
    """aiokafka.conn logs each request struct at DEBUG, SASL PLAIN auth bytes included.

    The struct is built as aiokafka builds it; the record goes through aiokafka's own
    logger to a handler that is not ours: the filter on that logger scrubs it first.
    """
    from aiokafka.protocol.admin import SaslAuthenticateRequest

    auth = "\0".join(["user", "user", SECRET]).encode("utf-8")
    struct = SaslAuthenticateRequest(auth).prepare({SaslAuthenticateRequest.API_KEY: (0, 1)})
    assert repr(SECRET.encode())[2:-1] in repr(struct)  # the leak this test guards against
    ours, theirs = io.StringIO(), io.StringIO()
    foreign = logging.StreamHandler(theirs)
    # Earlier tests in the session may have quietened aiokafka (the CLI sets its logger
    # to CRITICAL): this test needs the DEBUG line to be emitted at all.
    conn_log = logging.getLogger("aiokafka.conn")
    saved = (conn_log.level, conn_log.propagate, conn_log.disabled)
    conn_log.setLevel(logging.DEBUG)
    conn_log.propagate, conn_log.disabled = True, False
    handler = configure_logging(LoggingSettings(level="DEBUG", format="json"), ours)
    logging.getLogger().addHandler(foreign)
    register_secret(SECRET)
    try:
        conn_log.debug("Request to %s:%d %d: %s", "127.0.0.1", 9092, 7, struct)
    finally:
        logging.getLogger().removeHandler(foreign)
        logging.getLogger().removeHandler(handler)
        conn_log.setLevel(saved[0])
        conn_log.propagate, conn_log.disabled = saved[1], saved[2]
        clear_secrets()
    for text in (ours.getvalue(), theirs.getvalue()):
        assert "SaslAuthenticateRequest" in text and REDACTED in text
        assert "\\xc3\\xa9" not in text and SECRET not in text
