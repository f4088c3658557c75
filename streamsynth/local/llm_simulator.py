"""An OpenAI-compatible chat completions server for tests and benchmarks.

It answers ``POST /v1/chat/completions`` with deterministic text built from the
prompt, and can inject latency, faults and rate limits -- probabilistically
(seeded) or per request through markers such as ``[[sim:429]]`` placed in a
message. ``GET /stats`` reports what it served. The per-request path is kept
lean (no per-request logging, markers parsed only when ``[[sim:`` occurs) so
that the simulator is never the bottleneck of a client benchmark.

Run in-process with :class:`LLMSimulator` or in a child process with
:class:`SimulatorProcess`; ``python -m streamsynth.local.llm_simulator`` is the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import orjson
from aiohttp import web

from streamsynth.engine.loop import run as run_loop
from streamsynth.local.serving import (
    PriorityNotEnabledError,
    QueueFullError,
    Replica,
    ServingConfig,
    render_metrics,
)

__all__ = [
    "FaultConfig",
    "LLMSimulator",
    "LatencyModel",
    "ServingConfig",
    "SimulatorConfig",
    "SimulatorProcess",
    "SimulatorStats",
]

_JSON = "application/json"
_MARKER = "[[sim:"
_MARKER_RE = re.compile(r"\[\[sim:(.*?)\]\]", re.DOTALL)
_PREFIX_RE = re.compile(r'Start your answer with "([^"]*)"')
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
_TOKEN_RE = re.compile(r"\S+")
_FALLBACK_TEXT = (
    "data model text stream token answer river mountain signal energy system theory "
    "history market water city light science memory language network"
)
_FALLBACK_WORDS = _FALLBACK_TEXT.split()
_Z99 = 2.3263478740408408  # standard normal quantile of 0.99
_RATE_WINDOW_S = 60.0


# -- configuration ---------------------------------------------------------------------


@dataclass
class LatencyModel:
    """How long a request takes before it is answered."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    fixed_s: float = 0.0
    low_s: float = 0.0
    high_s: float = 0.0
    median_s: float = 0.5
    p99_s: float = 5.0
    #: Tokens per second: adds ``completion_tokens / token_rate`` to the base latency.
    token_rate: float | None = None

    def base_s(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.fixed_s
        if self.kind == "uniform":
            return rng.uniform(self.low_s, self.high_s)
        # Lognormal by median and p99: sigma follows from ln(p99/median) = z99 * sigma.
        sigma = max(0.0, math.log(max(self.p99_s, 1e-9) / max(self.median_s, 1e-9)) / _Z99)
        return rng.lognormvariate(math.log(max(self.median_s, 1e-9)), sigma)

    @classmethod
    def parse(cls, spec: str) -> LatencyModel:
        """``fixed:S`` | ``uniform:LOW:HIGH`` | ``lognormal:MEDIAN:P99`` (seconds)."""
        kind, _, rest = spec.partition(":")
        values = [float(v) for v in rest.split(":")] if rest else []
        if kind == "fixed" and len(values) == 1:
            return cls("fixed", fixed_s=values[0])
        if kind == "uniform" and len(values) == 2:
            return cls("uniform", low_s=values[0], high_s=values[1])
        if kind == "lognormal" and len(values) == 2:
            return cls("lognormal", median_s=values[0], p99_s=values[1])
        raise ValueError(f"bad latency spec {spec!r}: fixed:S | uniform:LO:HI | lognormal:MED:P99")


@dataclass
class FaultConfig:
    """Probabilistic faults, each drawn per request from the seeded RNG."""

    rate_429: float = 0.0
    retry_after_s: float | None = 1.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_hang: float = 0.0
    hang_s: float = 30.0
    rate_malformed: float = 0.0
    rate_empty_choices: float = 0.0


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    models: list[str] = field(default_factory=lambda: ["sim-model"])
    latency: LatencyModel = field(default_factory=LatencyModel)
    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int = 0
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    #: A capacity model (replicas, running slots, prefill, batched decode, prefix
    #: cache) instead of ``latency``; see :mod:`streamsynth.local.serving`.
    serving: ServingConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SimulatorConfig:
        raw = dict(raw)
        latency = LatencyModel(**raw.pop("latency", {}))
        faults = FaultConfig(**raw.pop("faults", {}))
        serving_raw = raw.pop("serving", None)
        serving = ServingConfig(**serving_raw) if serving_raw else None
        return cls(latency=latency, faults=faults, serving=serving, **raw)


@dataclass
class SimulatorStats:
    requests: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    max_inflight: int = 0
    inflight: int = 0
    #: Totals of the usage blocks sent (200 answers only).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Prompt tokens served from a replica's prefix cache (serving mode).
    cached_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status_counts"] = {str(k): v for k, v in self.status_counts.items()}
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SimulatorStats:
        raw = dict(raw)
        raw["status_counts"] = {int(k): int(v) for k, v in raw.get("status_counts", {}).items()}
        return cls(**raw)


# -- per-request directives ------------------------------------------------------------


@dataclass(slots=True)
class _Directives:
    """What the markers of one request ask for."""

    status: int | None = None
    retry_after_s: float | None = None
    hang: bool = False
    malformed: bool = False
    empty: bool = False
    fail_first: tuple[int, int] | None = None  # (N, status)
    latency_s: float | None = None
    reply: str | None = None
    finish: str | None = None
    json_mode: str | None = None  # see _json_answer
    context_length: bool = False


def _parse_markers(text: str, default_retry_after: float | None) -> _Directives:
    out = _Directives()
    for raw in _MARKER_RE.findall(text):
        if raw.startswith("reply="):
            out.reply = raw[len("reply=") :].replace("\\n", "\n")
        elif raw.startswith("latency="):
            out.latency_s = float(raw[len("latency=") :])
        elif raw.startswith("finish="):
            out.finish = raw[len("finish=") :]
        elif raw.startswith("json="):
            out.json_mode = raw[len("json=") :]
        elif raw == "context_length":
            out.context_length = True
        elif raw.startswith("fail_first="):
            count, _, status = raw[len("fail_first=") :].partition(":")
            out.fail_first = (int(count), int(status or 503))
        elif raw == "hang":
            out.hang = True
        elif raw == "malformed":
            out.malformed = True
        elif raw == "empty":
            out.empty = True
        else:
            code, _, after = raw.partition(":")
            if code.isdigit():
                out.status = int(code)
                out.retry_after_s = float(after) if after else default_retry_after
    return out


# -- answer text -----------------------------------------------------------------------


def _word_pool(text: str) -> list[str]:
    words = _WORD_RE.findall(_MARKER_RE.sub(" ", text) if _MARKER in text else text)
    return words or _FALLBACK_WORDS


def _sentence(rng: random.Random, pool: list[str], n_words: int) -> str:
    words = rng.choices(pool, k=max(1, n_words))
    words[0] = words[0].capitalize()
    return " ".join(words)


def _compose(prompt: str, pool: list[str], target: int, rng: random.Random) -> str:
    """A reply of about ``target`` words whose shape follows the prompt's request."""
    if "Question:" in prompt:
        lines = rng.randint(2, 6)
        per = max(4, target // lines)
        out = []
        for _ in range(lines):
            q = max(2, per // 3)
            out.append(
                f"- Question: {_sentence(rng, pool, q)}? Answer: {_sentence(rng, pool, per - q)}."
            )
        return "\n".join(out)
    if "bulleted list" in prompt:
        lines = max(2, min(12, target // 10))
        per = max(3, target // lines)
        return "\n".join(f"- {_sentence(rng, pool, per)}." for _ in range(lines))
    paragraphs = max(1, min(6, target // 80))
    per = max(1, target // paragraphs)
    return "\n\n".join(f"{_sentence(rng, pool, per)}." for _ in range(paragraphs))


def _truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut ``text`` after its ``max_tokens``-th whitespace-separated word."""
    for count, match in enumerate(_TOKEN_RE.finditer(text), start=1):
        if count == max_tokens:
            end = match.end()
            return text[:end], end < len(text.rstrip())
    return text, False


# -- JSON answers (helper G: structured output) -----------------------------------------
# A request with ``response_format`` gets JSON: any object for ``json_object``, a value
# built to satisfy ``json_schema.schema`` otherwise. Markers make it misbehave on purpose:
#   [[sim:json=invalid]]             never valid JSON
#   [[sim:json=invalid_then_valid]]  invalid until the conversation holds an assistant
#                                    turn (i.e. valid on the client's re-ask)
#   [[sim:json=wrong_shape]]         valid JSON that breaks the schema
#   [[sim:context_length]]           a vLLM-style 400 "maximum context length" error

_INVALID_JSON = '{"answer": "this object never ends'
_CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is 4096 tokens. However, you requested more "
    "tokens than that. Please reduce the length of the messages or completion."
)


def _wants_json(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _json_answer(body: dict[str, Any], mode: str | None, rng: random.Random) -> str:
    """The JSON text answering a ``response_format`` request (see the markers above)."""
    has_assistant = any(
        isinstance(m, dict) and m.get("role") == "assistant" for m in body.get("messages", [])
    )
    if mode == "invalid" or (mode == "invalid_then_valid" and not has_assistant):
        return _INVALID_JSON
    fmt = body["response_format"]
    schema: Any = {"type": "object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema") or schema
    if mode == "wrong_shape":
        # An array where an object is asked for; for a schema asking an array, an object.
        wrong: Any = {"unexpected": True} if schema.get("type") == "array" else [42]
        return orjson.dumps(wrong).decode()
    return orjson.dumps(_schema_value(schema, rng, 0)).decode()


def _schema_value(schema: Any, rng: random.Random, depth: int) -> Any:
    """A value valid against the common subset of JSON Schema that structured outputs use."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _schema_value(schema[key][0], rng, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _schema_value(sub, rng, depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        count = min(count, int(schema.get("maxItems", count)))
        return [_schema_value(schema.get("items", {}), rng, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = _bound(schema, "minimum", "exclusiveMinimum", 0.0)
        high = _bound(schema, "maximum", "exclusiveMaximum", low + 100)
        value = rng.randint(math.ceil(low) + 1, max(math.ceil(low) + 1, math.floor(high) - 1))
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    words = " ".join(rng.choices(_FALLBACK_WORDS, k=3))
    low_len = int(schema.get("minLength", 0))
    text = (words + " " + words * (low_len // max(len(words), 1) + 1))[: max(low_len, len(words))]
    return text[: int(schema.get("maxLength", len(text)))]


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, default: float) -> float:
    for key in (inclusive, exclusive):
        value = schema.get(key)
        if isinstance(value, int | float):
            return float(value)
    return default


# -- the server ------------------------------------------------------------------------


class _RateWindow:
    """A sliding 60 s window of (time, amount) for rpm/tpm limits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: collections.deque[tuple[float, int]] = collections.deque()
        self.used = 0

    def _expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - _RATE_WINDOW_S:
            self.used -= self.events.popleft()[1]

    def remaining(self, now: float) -> int:
        self._expire(now)
        return max(0, self.limit - self.used)

    def reset_after(self, now: float) -> float:
        return max(0.0, self.events[0][0] + _RATE_WINDOW_S - now) if self.events else 0.0

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.used += amount


def _error_body(status: int, message: str) -> bytes:
    kinds = {
        400: ("invalid_request_error", "bad_request"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
        503: ("service_unavailable", "overloaded"),
    }
    etype, code = kinds.get(status, ("server_error", "internal_error"))
    return orjson.dumps({"error": {"message": message, "type": etype, "code": code}})


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


class LLMSimulator:
    """The simulator server, running on the caller's event loop."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        self._fail_counts: dict[bytes, int] = {}
        self._rpm = _RateWindow(self.config.rpm_limit) if self.config.rpm_limit else None
        self._tpm = _RateWindow(self.config.tpm_limit) if self.config.tpm_limit else None
        self._stats = SimulatorStats()
        self._idle: asyncio.Event | None = None
        #: The bodies of the most recent chat requests (tests inspect what was sent).
        self.last_requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.port = 0
        serving = self.config.serving
        #: Serving mode: one engine per replica, each behind its own port.
        self.replicas = [Replica(serving, i) for i in range(serving.replicas)] if serving else []
        self._by_port: dict[int, Replica] = {}
        self.ports: list[int] = []

    # -- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    @property
    def base_urls(self) -> list[str]:
        """One base URL per replica (just :attr:`base_url` without serving mode)."""
        return [f"http://{self.config.host}:{port}/v1" for port in self.ports]

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        # access_log=None: per-request logging would dominate a 0-latency benchmark.
        # handler_cancellation: a client that gives up (timeout) cancels its handler, as
        # vLLM aborts such requests; it also lets stop() return without waiting out hangs.
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        base = self.config.port
        for i in range(max(1, len(self.replicas))):
            port = base + i if base else 0
            site = web.TCPSite(self._runner, self.config.host, port, backlog=4096)
            await site.start()
            # Port 0 asks the OS for a free port: read back the one it picked.
            sockets = getattr(site._server, "sockets", None)
            assert sockets, "simulator site has no listening socket"
            self.ports.append(int(sockets[0].getsockname()[1]))
        self.port = self.ports[0]
        for replica, port in zip(self.replicas, self.ports, strict=False):
            self._by_port[port] = replica
            replica.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for replica in self.replicas:
            await replica.stop()

    async def __aenter__(self) -> LLMSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- stats
    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no chat request is in flight (e.g. after a client gave up on one)."""
        if self._stats.inflight == 0:
            return
        self._idle = asyncio.Event()
        await asyncio.wait_for(self._idle.wait(), timeout_s)

    def stats(self) -> SimulatorStats:
        s = self._stats
        return dataclasses.replace(s, status_counts=dict(s.status_counts))

    def reset_stats(self) -> None:
        inflight = self._stats.inflight
        self._stats = SimulatorStats(inflight=inflight, max_inflight=inflight)
        self._fail_counts.clear()
        self.last_requests.clear()

    # -- small endpoints
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "streamsynth"} for m in self.config.models]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._stats.to_dict()), content_type=_JSON)

    async def _metrics(self, request: web.Request) -> web.Response:
        """vLLM-named metrics of the replica behind this port (empty without serving)."""
        replica = self._replica_of(request)
        text = render_metrics([replica], self.config.models[0]) if replica else ""
        return web.Response(text=text, content_type="text/plain")

    def _replica_of(self, request: web.Request) -> Replica | None:
        if not self.replicas:
            return None
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = int(sockname[1]) if sockname else self.port
        return self._by_port.get(port, self.replicas[0])

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    # -- chat completions
    async def _chat(self, request: web.Request) -> web.Response:
        stats = self._stats
        stats.requests += 1
        stats.inflight += 1
        if stats.inflight > stats.max_inflight:
            stats.max_inflight = stats.inflight
        status = 499  # nginx's "client closed request": kept if the handler is cancelled
        try:
            response = await self._answer(await request.read(), self._replica_of(request))
            status = response.status
            return response
        finally:
            # reset_stats() may have swapped the object mid-request: count on the current one.
            stats = self._stats
            stats.inflight = max(0, stats.inflight - 1)
            stats.status_counts[status] = stats.status_counts.get(status, 0) + 1
            if stats.inflight == 0 and self._idle is not None:
                self._idle.set()

    def _error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status, body=_error_body(status, message), content_type=_JSON, headers=headers
        )

    async def _answer(self, raw: bytes, replica: Replica | None = None) -> web.Response:
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
            texts = [str(m.get("content") or "") for m in messages]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return self._error(400, "request body must be JSON with a 'messages' list")
        self.last_requests.append(body)
        model = body.get("model")
        if model not in self.config.models:
            return self._error(404, f"model {model!r} does not exist")
        joined = "\n".join(texts)
        faults = self.config.faults
        marks = _parse_markers(joined, faults.retry_after_s) if _MARKER in joined else None
        digest = hashlib.blake2b(orjson.dumps(messages), digest_size=16).digest()

        early = self._marker_fault(marks, digest)
        if early is not None:
            return early
        words = joined.split() if replica is not None else None
        prompt_tokens = len(words) if words is not None else sum(len(t.split()) for t in texts)
        limit_headers, limited = self._rate_limit(prompt_tokens)
        if limited is not None:
            return limited
        rng = self._rng
        if faults.rate_429 and rng.random() < faults.rate_429:
            return self._error(429, "simulated rate limit", _retry_after(faults.retry_after_s))
        if faults.rate_500 and rng.random() < faults.rate_500:
            return self._error(500, "simulated server error")
        if faults.rate_503 and rng.random() < faults.rate_503:
            return self._error(503, "simulated overload")
        hang = (marks is not None and marks.hang) or (
            faults.rate_hang > 0 and rng.random() < faults.rate_hang
        )
        malformed = (marks is not None and marks.malformed) or (
            faults.rate_malformed > 0 and rng.random() < faults.rate_malformed
        )
        empty = (marks is not None and marks.empty) or (
            faults.rate_empty_choices > 0 and rng.random() < faults.rate_empty_choices
        )
        answer_rng = random.Random(int.from_bytes(digest[:8], "little") ^ self.config.seed)
        choices, completion_tokens = self._choices(body, joined, marks, answer_rng)
        if empty:
            choices, completion_tokens = [], 0
        cached = 0
        if replica is not None and words is not None and (marks is None or marks.latency_s is None):
            delay = faults.hang_s if hang else 0.0
            served = await self._serve(replica, words, completion_tokens, body.get("priority"))
            if isinstance(served, web.Response):
                return served
            cached = served
        else:
            delay = self._latency(marks, completion_tokens, rng)
            if hang:
                delay += faults.hang_s
        if delay > 0:
            await asyncio.sleep(delay)
        if malformed:
            return self._malformed(answer_rng)
        if self._tpm is not None:
            self._tpm.add(time.monotonic(), prompt_tokens + completion_tokens)
        self._stats.prompt_tokens += prompt_tokens
        self._stats.completion_tokens += completion_tokens
        self._stats.cached_tokens += cached
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if replica is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        payload = {
            "id": "chatcmpl-" + digest.hex()[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage,
        }
        return web.Response(body=orjson.dumps(payload), content_type=_JSON, headers=limit_headers)

    async def _serve(
        self, replica: Replica, words: list[str], completion_tokens: int, priority: Any
    ) -> int | web.Response:
        """Run the request through the replica's capacity model; its cached tokens."""
        if priority is not None and not isinstance(priority, int):
            return self._error(400, "'priority' must be an integer")
        try:
            result = await replica.generate(words, completion_tokens, priority or 0)
        except PriorityNotEnabledError as exc:
            return self._error(400, str(exc))
        except QueueFullError as exc:
            return self._error(429, f"server queue full: {exc}", _retry_after(1.0))
        return result.cached_tokens

    def _marker_fault(self, marks: _Directives | None, digest: bytes) -> web.Response | None:
        """The error a marker asks for, if any (checked before any limit or latency)."""
        if marks is None:
            return None
        if marks.context_length:
            return self._error(400, _CONTEXT_LENGTH_MESSAGE)
        if marks.status is not None and marks.status >= 400:
            headers = _retry_after(marks.retry_after_s) if marks.status == 429 else None
            return self._error(marks.status, f"simulated HTTP {marks.status}", headers)
        if marks.fail_first is not None:
            count, status = marks.fail_first
            seen = self._fail_counts.get(digest, 0)
            self._fail_counts[digest] = seen + 1
            if seen < count:
                headers = _retry_after(self.config.faults.retry_after_s) if status == 429 else None
                return self._error(status, f"simulated failure {seen + 1}/{count}", headers)
        return None

    def _rate_limit(self, prompt_tokens: int) -> tuple[dict[str, str] | None, web.Response | None]:
        """``x-ratelimit-*`` headers, and a 429 when the rpm/tpm window is exhausted."""
        if self._rpm is None and self._tpm is None:
            return None, None
        now = time.monotonic()
        headers: dict[str, str] = {}
        wait = 0.0
        for name, window, need in (
            ("requests", self._rpm, 1),
            ("tokens", self._tpm, prompt_tokens),
        ):
            if window is None:
                continue
            remaining = window.remaining(now)
            if remaining < need:
                wait = max(wait, window.reset_after(now))
            headers[f"x-ratelimit-limit-{name}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, remaining - need))
            headers[f"x-ratelimit-reset-{name}"] = f"{window.reset_after(now):.3f}s"
        if wait > 0:
            headers.update(_retry_after(math.ceil(wait * 1000) / 1000) or {})
            return headers, self._error(429, "rate limit exceeded", headers)
        if self._rpm is not None:
            self._rpm.add(now, 1)
        return headers, None

    def _choices(
        self,
        body: dict[str, Any],
        prompt: str,
        marks: _Directives | None,
        rng: random.Random,
    ) -> tuple[list[dict[str, Any]], int]:
        n = int(body.get("n") or 1)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        choices: list[dict[str, Any]] = []
        total = 0
        pool: list[str] | None = None
        for index in range(n):
            if marks is not None and marks.reply is not None:
                text, truncated = marks.reply, False
            elif _wants_json(body):
                text, truncated = _json_answer(body, marks.json_mode if marks else None, rng), False
            else:
                if pool is None:
                    pool = _word_pool(prompt)
                text, truncated = self._generate(prompt, pool, max_tokens, rng)
            finish = "length" if truncated else "stop"
            if marks is not None and marks.finish:
                finish = marks.finish
            total += len(text.split())
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            )
        return choices, total

    @staticmethod
    def _generate(
        prompt: str, pool: list[str], max_tokens: int | None, rng: random.Random
    ) -> tuple[str, bool]:
        natural = int(max(60, len(prompt.split())) * rng.uniform(0.8, 1.2))
        prefix_match = _PREFIX_RE.search(prompt)
        text = _compose(prompt, pool, natural, rng)
        if prefix_match:
            text = f"{prefix_match.group(1)} {text}"
        if max_tokens is not None:
            return _truncate(text, int(max_tokens))
        return text, False

    def _latency(self, marks: _Directives | None, tokens: int, rng: random.Random) -> float:
        if marks is not None and marks.latency_s is not None:
            return marks.latency_s
        model = self.config.latency
        delay = model.base_s(rng) if (model.kind != "fixed" or model.fixed_s) else 0.0
        if model.token_rate:
            delay += tokens / model.token_rate
        return delay

    @staticmethod
    def _malformed(rng: random.Random) -> web.Response:
        # Two shapes a broken proxy produces: a non-JSON body, and JSON without choices.
        if rng.random() < 0.5:
            return web.Response(body=b"<html>upstream garbage", content_type=_JSON)
        return web.Response(body=b'{"object": "chat.completion", "id": "x"}', content_type=_JSON)


def _retry_after(seconds: float | None) -> dict[str, str] | None:
    return None if seconds is None else {"Retry-After": _seconds(seconds)}


# -- in a child process ----------------------------------------------------------------


def _http(url: str, method: str = "GET", timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback only
        data: dict[str, Any] = orjson.loads(resp.read())
        return data


class SimulatorProcess:
    """The simulator in a child process, so a benchmark's client has the GIL to itself."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.base_urls: list[str] = []

    @property
    def _root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def start(self, timeout_s: float = 30.0) -> str:
        cmd = [
            sys.executable,
            "-m",
            "streamsynth.local.llm_simulator",
            "--config-json",
            orjson.dumps(self.config.to_dict()).decode(),
            "--exit-on-stdin-eof",
        ]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline().decode() if ready else ""
        if not line.strip():
            self.stop()
            raise RuntimeError("simulator process did not report its address")
        # "llm-sim listening on URL [URL...]": one URL per replica in serving mode.
        self.base_urls = line.partition(" on ")[2].split()
        self.base_url = self.base_urls[0]
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _http(self._root + "/health", timeout=1.0).get("status") == "ok":
                    return self.base_url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("simulator process did not become healthy")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def stats(self) -> SimulatorStats:
        return SimulatorStats.from_dict(_http(self._root + "/stats"))

    def reset_stats(self) -> None:
        _http(self._root + "/stats/reset", method="POST")

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- CLI -------------------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    if args.config_json:
        return SimulatorConfig.from_dict(orjson.loads(args.config_json))
    latency = LatencyModel.parse(args.latency)
    latency.token_rate = args.token_rate
    faults = FaultConfig(
        rate_429=args.rate_429,
        retry_after_s=args.retry_after,
        rate_500=args.rate_500,
        rate_503=args.rate_503,
        rate_hang=args.rate_hang,
        hang_s=args.hang_s,
        rate_malformed=args.rate_malformed,
        rate_empty_choices=args.rate_empty,
    )
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        models=[m for m in args.models.split(",") if m],
        latency=latency,
        faults=faults,
        seed=args.seed,
        rpm_limit=args.rpm_limit,
        tpm_limit=args.tpm_limit,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="OpenAI-compatible LLM simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--models", default="sim-model", help="comma-separated model ids")
    p.add_argument(
        "--latency", default="fixed:0", help="fixed:S | uniform:LO:HI | lognormal:MED:P99"
    )
    p.add_argument("--token-rate", type=float, default=None, help="completion tokens/s")
    p.add_argument("--rate-429", type=float, default=0.0)
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--rate-500", type=float, default=0.0)
    p.add_argument("--rate-503", type=float, default=0.0)
    p.add_argument("--rate-hang", type=float, default=0.0)
    p.add_argument("--hang-s", type=float, default=30.0)
    p.add_argument("--rate-malformed", type=float, default=0.0)
    p.add_argument("--rate-empty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rpm-limit", type=int, default=None)
    p.add_argument("--tpm-limit", type=int, default=None)
    p.add_argument("--config-json", default=None, help="a whole SimulatorConfig as JSON")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes")
    return p


async def serve(config: SimulatorConfig, *, exit_on_stdin_eof: bool = False) -> None:
    """Serve until SIGINT/SIGTERM; prints the base URL(s) after "listening on" on one line."""
    sim = LLMSimulator(config)
    await sim.start()
    print(f"llm-sim listening on {' '.join(sim.base_urls)}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    if exit_on_stdin_eof:
        _stop_on_stdin_eof(loop, done)
    try:
        await done.wait()
    finally:
        await sim.stop()


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Stop when stdin closes: the parent holds its write end, so a killed parent leaves
    no orphan simulator behind."""
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            done.set()

    loop.add_reader(fd, on_readable)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # uvloop where installed: the simulator must never be what bounds a benchmark.
    run_loop(serve(_config_from_args(args), exit_on_stdin_eof=args.exit_on_stdin_eof))


if __name__ == "__main__":
    main()
