"""A secret with non-ASCII and backslash characters never leaves the process.

The API key and the SASL password come in through the config (which registers
them); a loopback server echoes the key at every offset of a long error body, as
some proxies do. Neither the DLQ headers, the error message, the metrics nor the
config errors may carry the key or any fragment of it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from streamsynth.config import settings_from_dict
from streamsynth.kafka.dlq import Failure, dlq_headers, header_map
from streamsynth.llm.errors import LLMError
from streamsynth.llm.factory import build_llm_client
from streamsynth.llm.types import ChatRequest
from streamsynth.metrics.registry import Metrics, PrometheusLLMObserver
from streamsynth.redact import REDACTED, clear_secrets, is_secret_field, redact
from streamsynth.testing.stub import chat_stub

#: Latin-1 non-ASCII (it must travel in an HTTP header) and backslashes.
API_KEY = "kéy\\Sécrêt\\ü-0042-zq"
SASL_PASSWORD = "Sé\\crêt-кл\\ю4-pw"
BODY_CHARS = 3000


def _fragments(secret: str, size: int = 6) -> set[str]:
    forms = {secret, ascii(secret)[1:-1], json.dumps(secret)[1:-1], repr(secret.encode())[2:-1]}
    return {form[i : i + size] for form in forms for i in range(len(form) - size + 1)}


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


class EchoServer:
    """Answers 400 with the key echoed at ``offset`` of a long body (JSON or plain text)."""

    def __init__(self) -> None:
        self.offset = 0
        self.as_json = False

    async def handle(self, request: web.Request) -> web.Response:
        text = "x" * self.offset + f"invalid api key {API_KEY} given"
        text += "y" * max(BODY_CHARS - len(text), 0)
        if self.as_json:  # like many servers: non-ASCII as \uXXXX escapes in the raw JSON
            body = json.dumps(
                {"error": {"message": text, "type": "invalid_request_error"}}
            ).encode()
        else:
            body = text.encode("utf-8")
        return web.Response(status=400, body=body, content_type="text/plain")


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoServer, str]]:
    server = EchoServer()
    async with chat_stub(server.handle) as url:
        yield server, url


def _config(base_url: str) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": "127.0.0.1:9092",
            "input_topic": "in",
            "dlq_topic": "dlq",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "worker",
            "sasl_password": SASL_PASSWORD,
        },
        "llm": {
            "base_url": base_url,
            "api_key": API_KEY,
            "model": "m",
            "max_attempts": 1,
            "cache": {"kind": "none"},
        },
        "stages": [
            {"task": "custom", "prompt": "{document}", "output_field": "o", "output_topic": "out"}
        ],
    }


async def test_an_echoed_key_leaves_no_fragment_in_dlq_headers_or_metrics(
    echo: tuple[EchoServer, str],
) -> None:
    server, url = echo
    settings = settings_from_dict(_config(url))  # registers the key and the password
    metrics = Metrics()
    client = build_llm_client(settings.llm, observer=PrometheusLLMObserver(metrics))
    request = ChatRequest(model="m", messages=({"role": "user", "content": "hi"},), stage="s")
    fragments = _fragments(API_KEY)
    checked = redacted = 0
    try:
        for as_json in (False, True):
            server.as_json = as_json
            for offset in range(0, 1300, 17):  # across both cuts (500 and 512 characters)
                server.offset = offset
                with pytest.raises(LLMError) as info:
                    await client.chat(request)
                failure = Failure.from_exception(info.value, stage="s")
                headers = header_map(dlq_headers(failure, topic="in", partition=0, offset=1))
                for text in (str(info.value), *headers.values()):
                    leaked = [f for f in fragments if f in text]
                    assert not leaked, (offset, as_json, leaked, text)
                checked += 1
                redacted += REDACTED in headers["streamsynth.error.message"]
    finally:
        await client.aclose()
    assert checked == 2 * len(range(0, 1300, 17))
    assert redacted > 20  # the key was inside the kept text that often, and was removed
    exposition = generate_latest(metrics.registry).decode()
    assert "http_400" in exposition  # the failures were counted
    for fragment in _fragments(API_KEY) | _fragments(SASL_PASSWORD):
        assert fragment not in exposition


def test_a_config_error_never_quotes_the_key_or_the_password() -> None:
    cfg = _config("http://127.0.0.1:9/v1")
    cfg["llm"]["max_concurrency"] = "many"
    cfg["llm"]["base_urls"] = [f"ftp://user:{API_KEY}@h/v1"]
    cfg["kafka"]["bootstrap_servers"] = f"worker:{SASL_PASSWORD}@h:9092"
    with pytest.raises(ValueError) as info:
        settings_from_dict(cfg)
    text = str(info.value)
    assert "llm.max_concurrency" in text and "kafka.bootstrap_servers" in text
    for fragment in _fragments(API_KEY) | _fragments(SASL_PASSWORD):
        assert fragment not in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("sasl_password", True),
        ("STREAMSYNTH_LLM__API_KEY", True),
        ("access_token", True),
        ("max_tokens", False),
        ("context_tokens", False),
        ("api_key_env", False),  # the name of a variable, not the key
        ("api_key_file", False),
    ],
)
def test_which_fields_hold_secrets(name: str, secret: bool) -> None:
    assert is_secret_field(name) is secret


def test_loading_a_config_registers_only_its_secrets() -> None:
    cfg = _config("http://127.0.0.1:9/v1")
    cfg["llm"].pop("api_key")
    cfg["llm"]["api_key_env"] = "MY_KEY_VARIABLE"
    cfg["stages"][0]["generation"] = {"max_tokens": 2048}
    settings_from_dict(cfg)
    text = "max_tokens 2048 from MY_KEY_VARIABLE, sasl " + SASL_PASSWORD
    assert redact(text) == f"max_tokens 2048 from MY_KEY_VARIABLE, sasl {REDACTED}"
