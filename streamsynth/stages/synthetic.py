"""SyntheticStage: one prompt template, one LLM call per document.

The streaming successor of NeMo Curator's ``BaseSyntheticStage`` (also exported
under that name). Differences that matter in production:

* one client and one stage serve any number of batches on one long-lived loop;
* a failed row keeps its place with an error; the rest of the batch is kept;
* usage, finish_reason, latency and attempts are kept per row;
* ``aprocess_record`` lets the Kafka worker process documents independently.

Two guards and one contract around the request:

* **context guard** (``context_tokens`` set): the prompt is counted with the stage's
  tokenizer before sending; ``max_tokens`` is shrunk to what the context leaves, or the
  request fails with :class:`ContextLengthError` without being sent when fewer than
  ``min_output_tokens`` would remain;
* **truncation** (``on_truncated``): an answer that stopped at ``max_tokens`` is kept,
  filtered (reason ``truncated``) or dead-lettered;
* **structured answers** (``response_format`` in the generation config): the format is
  sent unchanged, the answer parsed and validated with ``jsonschema``; an invalid answer
  is re-asked (the conversation shows it the error) up to ``parse_retries`` times, then
  fails with :class:`InvalidOutputError`. The output field holds the parsed value.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import orjson

from streamsynth.checks import check_prompt_template
from streamsynth.checks import template_fields as template_fields  # re-exported (old home)
from streamsynth.engine.errors import (
    InvalidOutputError,
    MissingColumnError,
    StageConfigError,
    TruncatedOutputError,
)
from streamsynth.engine.stage import LLMCall, Output, RecordOutcome, RecordStage
from streamsynth.llm.client import AsyncLLMClient, LLMClient, is_async_client
from streamsynth.llm.errors import ContextLengthError
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Message

#: What a stage does with an answer whose ``finish_reason`` is ``length``.
OnTruncated = Literal["keep", "filter", "dlq"]
#: The filter reason of a truncated answer dropped with ``on_truncated: filter``.
TRUNCATED: Final = "truncated"
#: Tokens a chat template adds around each message (role markers, separators) and once
#: per request (the assistant turn's header): the context guard counts them too.
TEMPLATE_TOKENS_PER_MESSAGE: Final = 4
TEMPLATE_TOKENS_PER_REQUEST: Final = 3
#: The longest validation error quoted back to the model in a re-ask.
_MAX_ERROR_CHARS: Final = 300


class TokenCounter(Protocol):
    """Anything that counts a text's tokens (every Nemotron-CC tokenizer does)."""

    def count(self, text: str) -> int: ...


class _AnswerInvalid(ValueError):
    """The answer is not JSON, or not JSON of the requested shape."""


class AnswerValidator:
    """Parses and checks an answer against a ``response_format`` (jsonschema does the checking).

    ``json_object`` asks for any JSON object; ``json_schema`` for a value valid against
    ``json_schema.schema`` (checked at construction: a bad schema is a configuration
    error, not a stream of dead letters).
    """

    def __init__(self, response_format: Mapping[str, Any]) -> None:
        from jsonschema import SchemaError, validators  # ~50 ms: only for structured stages

        kind = response_format.get("type")
        if kind == "json_object":
            schema: dict[str, Any] = {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
                raise StageConfigError("response_format json_schema needs json_schema.schema")
            schema = dict(spec["schema"])
        else:
            raise StageConfigError(
                f"response_format type {kind!r}: use 'json_object' or 'json_schema'"
            )
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            raise StageConfigError(f"response_format schema is invalid: {exc.message}") from exc
        self._validator = cls(schema)

    def parse(self, text: str) -> Any:
        """The answer's JSON value; raises ValueError (``_AnswerInvalid``) saying what is wrong."""
        from jsonschema.exceptions import best_match

        try:
            value = orjson.loads(_unfenced(text))
        except orjson.JSONDecodeError as exc:
            raise _AnswerInvalid(f"the answer is not valid JSON ({exc})") from None
        error = best_match(self._validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise _AnswerInvalid(f"at {where}: {error.message}"[:_MAX_ERROR_CHARS])
        return value


def _unfenced(text: str) -> str:
    """The answer without a Markdown code fence (models without guided decoding add one)."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6:
        body = stripped[3:-3]
        first_newline = body.find("\n")
        # Drop an info string such as "json" on the fence's first line.
        if first_newline >= 0 and body[:first_newline].strip().isalnum():
            body = body[first_newline + 1 :]
        return body.strip()
    return stripped


@dataclass
class SyntheticStage(RecordStage):
    """Send ``prompt.format(document=record[input_field])`` and store the answer.

    ``system_prompt`` set: a system and a user message; unset: a user message alone.
    """

    system_prompt: str | None = None
    prompt: str | None = None
    input_field: str = "text"
    output_field: str = "generated"
    client: AsyncLLMClient | LLMClient | None = None
    model_name: str | None = None
    generation_config: GenerationConfig | None = None
    name: str = "SyntheticStage"
    #: Re-asks of an invalid structured answer before it is dead-lettered.
    parse_retries: int = 2
    #: None: the stage's own default (``keep`` here; Nemotron-CC tasks keep Curator's rules).
    on_truncated: OnTruncated | None = None
    #: The model's context in tokens; None turns the context guard off.
    context_tokens: int | None = None
    #: The fewest answer tokens worth sending a request for (the context guard's floor).
    min_output_tokens: int = 16
    #: Counts prompt tokens for the context guard (default: the approximate counter).
    tokenizer: TokenCounter | None = None
    is_async_client: bool = field(init=False, default=False)
    _validator: AnswerValidator | None = field(init=False, default=None, repr=False)
    _prompt_digest: tuple[str | None, str | None, str] | None = field(
        init=False, default=None, repr=False
    )

    def __post_init__(self) -> None:
        if not self.prompt:
            raise StageConfigError(f"stage {self.name!r}: 'prompt' is required")
        try:
            check_prompt_template(self.prompt)  # the rule config loading applies too
        except ValueError as exc:
            raise StageConfigError(f"stage {self.name!r}: 'prompt' {exc}") from exc
        if self.client is None:
            raise StageConfigError(f"stage {self.name!r}: 'client' is required")
        if not self.model_name:
            raise StageConfigError(f"stage {self.name!r}: 'model_name' is required")
        if not self.input_field or not self.output_field:
            raise StageConfigError(f"stage {self.name!r}: 'input_field'/'output_field' required")
        self.is_async_client = is_async_client(self.client)
        if self.generation_config is None:
            self.generation_config = GenerationConfig()
        self._check_guards()
        response_format = self.generation_config.response_format
        if response_format is not None and response_format.get("type") != "text":
            self._validator = AnswerValidator(response_format)

    def _check_guards(self) -> None:
        if self.parse_retries < 0:
            raise StageConfigError(f"stage {self.name!r}: 'parse_retries' must be >= 0")
        if self.on_truncated not in (None, "keep", "filter", "dlq"):
            raise StageConfigError(
                f"stage {self.name!r}: 'on_truncated' must be keep, filter or dlq"
            )
        if self.min_output_tokens < 1:
            raise StageConfigError(f"stage {self.name!r}: 'min_output_tokens' must be >= 1")
        if self.context_tokens is not None:
            if self.context_tokens <= self.min_output_tokens:
                raise StageConfigError(
                    f"stage {self.name!r}: 'context_tokens' must exceed 'min_output_tokens'"
                )
            if self.tokenizer is None:
                # Imported here: the tokenizers live beside the tasks, which import this module.
                from streamsynth.stages.nemotron_cc.tokenizer import ApproxTokenizer

                self.tokenizer = ApproxTokenizer()

    def prompt_sha256(self) -> str:
        """SHA-256 of the system prompt and the template (recomputed if either changes)."""
        memo = self._prompt_digest
        if memo is None or memo[0] != self.system_prompt or memo[1] != self.prompt:
            material = orjson.dumps({"system_prompt": self.system_prompt, "prompt": self.prompt})
            memo = (self.system_prompt, self.prompt, hashlib.sha256(material).hexdigest())
            self._prompt_digest = memo
        return memo[2]

    # -- declared columns -------------------------------------------------------------
    def inputs(self) -> list[str]:
        return [self.input_field]

    def outputs(self) -> list[str]:
        return [self.output_field]

    # -- request construction ---------------------------------------------------------
    def format_prompt(self, document: str) -> str:
        assert self.prompt is not None
        return self.prompt.format(document=document)

    def build_messages(self, document: str) -> tuple[Message, ...]:
        user: Message = {"role": "user", "content": self.format_prompt(document)}
        if self.system_prompt:
            return ({"role": "system", "content": self.system_prompt}, user)
        return (user,)

    def build_request(self, document: str) -> ChatRequest:
        """The request for ``document``, fitted to the context (may raise ContextLengthError)."""
        return self.request_for(self.build_messages(document))

    def request_for(self, messages: tuple[Message, ...]) -> ChatRequest:
        assert self.model_name is not None and self.generation_config is not None
        return ChatRequest(
            model=self.model_name,
            messages=messages,
            config=self.fit_to_context(messages, self.generation_config),
            stage=self.name,
        )

    # -- the context guard --------------------------------------------------------------
    def prompt_tokens(self, messages: tuple[Message, ...]) -> int:
        """The prompt's tokens as the guard counts them: contents plus template overhead."""
        assert self.tokenizer is not None
        count = self.tokenizer.count
        content = sum(count(m["content"]) for m in messages)
        return content + TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS_PER_REQUEST

    def fit_to_context(
        self, messages: tuple[Message, ...], config: GenerationConfig
    ) -> GenerationConfig:
        """``config`` with ``max_tokens`` shrunk to fit the context, or ContextLengthError.

        The request is never sent when it cannot fit: a server would reject it with a 400
        after queueing it, and a retry cannot help.
        """
        if self.context_tokens is None:
            return config
        prompt = self.prompt_tokens(messages)
        room = self.context_tokens - prompt
        wanted = config.max_tokens
        if wanted is not None and wanted <= room:
            return config
        if room >= self.min_output_tokens:
            return config if wanted is None else config.model_copy(update={"max_tokens": room})
        raise ContextLengthError(
            f"stage {self.name!r}: the prompt is about {prompt} tokens; the model's context is "
            f"{self.context_tokens}, which leaves fewer than min_output_tokens "
            f"({self.min_output_tokens}) for the answer; not sent",
            status_code=400,
            attempts=0,
        )

    # -- sending --------------------------------------------------------------------------
    async def agenerate(self, document: str) -> ChatResult:
        """One LLM call for ``document``; raises the client's typed errors."""
        return await self.asend(self.build_request(document))

    async def asend(self, request: ChatRequest) -> ChatResult:
        """Send ``request``; the result remembers it (lineage). Applies ``on_truncated: dlq``."""
        if self.is_async_client:
            result: ChatResult = await self.client.chat(request)  # type: ignore[union-attr,misc]
        else:
            # A sync client blocks: keep it off the loop (bounded by the default executor).
            result = await asyncio.to_thread(self.client.chat, request)  # type: ignore[union-attr,arg-type]
        result.request = request
        if self.on_truncated == "dlq" and result.finish_reason == "length":
            raise TruncatedOutputError(
                f"stage {self.name!r}: the answer stopped at max_tokens "
                f"({request.config.max_tokens}) and on_truncated is dlq",
                attempts=result.attempts,
                call=call_of(result),
            )
        return result

    # -- record processing ------------------------------------------------------------
    def document_of(self, record: Mapping[str, Any]) -> str:
        if self.input_field not in record:
            raise MissingColumnError(self.name, self.input_field, list(record))
        value = record[self.input_field]
        return "" if value is None else str(value)

    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        calls: list[LLMCall] = []
        try:
            document = self.document_of(record)
            result = await self.agenerate(document)
            calls.append(call_of(result))
            if self._is_filtered_truncation(result):
                return RecordOutcome(filtered=TRUNCATED, calls=calls)
            value: Any = result.text
            if self._validator is not None:
                value = await self._structured(result, calls)
        except InvalidOutputError as exc:
            return RecordOutcome(error=exc, calls=calls)  # its calls are already listed
        except Exception as exc:
            return RecordOutcome(error=exc, calls=calls + calls_of_error(exc, self))
        if value is _FILTERED:
            return RecordOutcome(filtered=TRUNCATED, calls=calls)
        data = dict(record)
        data[self.output_field] = value
        return RecordOutcome(outputs=[Output(data, calls)], calls=calls)

    def _is_filtered_truncation(self, result: ChatResult) -> bool:
        return self.on_truncated == "filter" and result.finish_reason == "length"

    async def _structured(self, result: ChatResult, calls: list[LLMCall]) -> Any:
        """The answer's parsed value, re-asking up to ``parse_retries`` times while invalid.

        A re-ask continues the conversation: the invalid answer as the assistant's turn,
        then the validation error. So it is a different request (its own cache entry:
        a redone record replays the same conversation for free).
        """
        assert self._validator is not None
        for asked in range(1, self.parse_retries + 2):
            try:
                return self._validator.parse(result.text)
            except _AnswerInvalid as invalid:
                if asked > self.parse_retries:
                    raise InvalidOutputError(
                        f"stage {self.name!r}: invalid answer after {asked} requests: {invalid}",
                        attempts=sum(c.attempts for c in calls),
                    ) from None
                assert result.request is not None
                result = await self.asend(self._reask(result.request, result.text, str(invalid)))
                calls.append(call_of(result))
                if self._is_filtered_truncation(result):
                    return _FILTERED
        raise AssertionError("unreachable")  # the loop returns or raises

    def _reask(self, request: ChatRequest, answer: str, error: str) -> ChatRequest:
        messages: tuple[Message, ...] = (
            *request.messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": reask_prompt(error)},
        )
        return self.request_for(messages)

    def setup(self) -> None:
        setup = getattr(self.client, "setup", None)
        if callable(setup):
            setup()


#: Marks a structured answer whose re-ask came back truncated under ``on_truncated: filter``.
_FILTERED: Final = object()


def reask_prompt(error: str) -> str:
    """The user turn that asks again after an invalid structured answer."""
    return (
        f"That answer is not valid: {error}. Reply again with only the JSON value, "
        "exactly as the requested format describes, and no other text."
    )


#: id(config) -> (config, its request fields): one shared, read-only dict per config, so
#: lineage costs no dict per call and output ids can cache their per-stage part.
_SENT_FIELDS: dict[int, tuple[GenerationConfig, dict[str, Any]]] = {}
_SENT_FIELDS_MAX = 1024


def sent_fields(config: GenerationConfig) -> dict[str, Any]:
    """``config.request_fields()``, shared per config: treat the dict as read-only."""
    hit = _SENT_FIELDS.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    if len(_SENT_FIELDS) >= _SENT_FIELDS_MAX:
        _SENT_FIELDS.clear()  # configs made per request (a shrunk max_tokens): start over
    fields = config.request_fields()
    _SENT_FIELDS[id(config)] = (config, fields)  # holding config keeps its id unique
    return fields


def call_of(result: ChatResult) -> LLMCall:
    request = result.request
    return LLMCall(
        model=result.model,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        finish_reason=result.finish_reason,
        latency_s=result.latency_s,
        attempts=result.attempts,
        cached=result.cached,
        request_model=request.model if request is not None else None,
        generation=sent_fields(request.config) if request is not None else None,
        endpoint=result.endpoint,
        cached_tokens=result.usage.cached_tokens,
    )


def calls_of_error(exc: BaseException, stage: SyntheticStage) -> list[LLMCall]:
    if isinstance(exc, TruncatedOutputError) and exc.call is not None:
        return [exc.call]  # answered (and billed), then refused by on_truncated
    # A failed request still cost attempts (never tokens we were told about).
    attempts = int(getattr(exc, "attempts", 0) or 0)
    if attempts == 0:
        return []
    return [LLMCall(stage.model_name or "", 0, 0, None, 0.0, attempts)]


#: For users coming from NeMo Curator.
BaseSyntheticStage = SyntheticStage
