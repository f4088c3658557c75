"""Value types shared by every LLM client, transport and stage.

A stage builds a :class:`ChatRequest`; a client (the resilient client, or a bare
transport) turns it into a :class:`ChatResult`. Nothing here performs I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationConfig(BaseModel):
    """Sampling parameters of one chat completion request.

    ``extra_body`` is merged into the request body last, so a server-specific
    field (vLLM's ``repetition_penalty``, NIM's ``nvext``) can be sent without a
    code change. ``top_k`` is not part of the OpenAI API: it is sent in the body
    only when set, which vLLM and NIM accept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(default=2048, ge=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = 0
    stop: list[str] | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    #: OpenAI's ``response_format`` (``{"type": "json_object"}`` or ``{"type": "json_schema",
    #: "json_schema": {...}}``), sent unchanged; vLLM, NIM and llama.cpp accept it too.
    response_format: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        # A bare string is one stop sequence, never a list literal to be parsed.
        if isinstance(value, str):
            return [value]
        return value

    @property
    def deterministic(self) -> bool:
        """True when the same request must give the same answer (safe to cache)."""
        return self.n == 1 and (self.temperature == 0.0 or self.seed is not None)

    def request_fields(self) -> dict[str, Any]:
        """The body fields of an OpenAI chat completion request, without model/messages."""
        body: dict[str, Any] = {"n": self.n, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop:
            body["stop"] = list(self.stop)
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.top_k is not None and self.top_k > 0:
            body["top_k"] = self.top_k
        if self.response_format is not None:
            body["response_format"] = self.response_format
        body.update(self.extra_body)
        return body


# Not frozen (see LLMCall in streamsynth.engine.stage): one is made per record, and a
# request is never changed once made; a changed one is a new request (``replace``).
@dataclass(slots=True)
class ChatRequest:
    """One chat completion to perform. ``stage`` only labels metrics and accounting.

    Read-only by convention: the cache, the retry loop and lineage share one request.
    """

    model: str
    messages: tuple[Message, ...]
    config: GenerationConfig = field(default_factory=GenerationConfig)
    stage: str = ""
    timeout_s: float | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body sent to ``/chat/completions``."""
        body: dict[str, Any] = {"model": self.model, "messages": list(self.messages)}
        body.update(self.config.request_fields())
        return body

    def fingerprint(self) -> str:
        """A stable digest of what determines the answer: model, messages and the parameters
        sent (exactly the body, so two configs that send the same request share it)."""
        payload = orjson.dumps(
            {
                "model": self.model,
                "messages": list(self.messages),
                "parameters": self.config.request_fields(),
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(payload).hexdigest()

    def cache_key(self) -> str:
        """The response cache's key: the request's :meth:`fingerprint`."""
        return self.fingerprint()

    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a request used; ``known`` is False when the server's usage block was
    missing or not numbers (the counts are then 0, and the rate budget keeps its estimate)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: ``usage.prompt_tokens_details.cached_tokens`` when the server sends it (prefix cache).
    cached_tokens: int | None = None
    known: bool = True

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


UNKNOWN_USAGE = Usage(known=False)


@dataclass(slots=True)
class ChatResult:
    """The answer to a :class:`ChatRequest`, with what it cost.

    ``attempts`` counts HTTP attempts (1 = first try succeeded; 0 = cache hit).
    ``latency_s`` is the wall time from the first attempt to the answer, backoff included.
    """

    texts: list[str]
    finish_reasons: list[str | None]
    usage: Usage
    model: str
    latency_s: float = 0.0
    attempts: int = 1
    cached: bool = False
    endpoint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: The request this answers, as actually sent (set by the stage; read for lineage).
    request: ChatRequest | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0] if self.finish_reasons else None
