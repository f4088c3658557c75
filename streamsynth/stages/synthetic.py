"""SyntheticStage: one prompt template, one LLM call per document.

The streaming successor of NeMo Curator's ``BaseSyntheticStage`` (also exported
under that name). Differences that matter in production:

* one client and one stage serve any number of batches on one long-lived loop;
* a failed row keeps its place with an error; the rest of the batch is kept;
* usage, finish_reason, latency and attempts are kept per row;
* ``aprocess_record`` lets the Kafka worker process documents independently.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamsynth.engine.errors import MissingColumnError, StageConfigError
from streamsynth.engine.stage import LLMCall, Output, RecordOutcome, RecordStage
from streamsynth.llm.client import AsyncLLMClient, LLMClient, is_async_client
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Message


def template_fields(template: str) -> set[str]:
    """The placeholder names of a ``str.format`` template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


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
    is_async_client: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not self.prompt:
            raise StageConfigError(f"stage {self.name!r}: 'prompt' is required")
        try:
            fields = template_fields(self.prompt)
        except ValueError as exc:
            raise StageConfigError(f"stage {self.name!r}: invalid prompt template: {exc}") from exc
        if "document" not in fields:
            raise StageConfigError(
                f"stage {self.name!r}: 'prompt' must contain the {{document}} placeholder"
            )
        unknown = fields - {"document"}
        if unknown:
            raise StageConfigError(
                f"stage {self.name!r}: 'prompt' has unknown placeholders "
                f"{sorted(unknown)}; only {{document}} is filled (double braces for literals)"
            )
        if self.client is None:
            raise StageConfigError(f"stage {self.name!r}: 'client' is required")
        if not self.model_name:
            raise StageConfigError(f"stage {self.name!r}: 'model_name' is required")
        if not self.input_field or not self.output_field:
            raise StageConfigError(f"stage {self.name!r}: 'input_field'/'output_field' required")
        self.is_async_client = is_async_client(self.client)
        if self.generation_config is None:
            self.generation_config = GenerationConfig()

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
        assert self.model_name is not None and self.generation_config is not None
        return ChatRequest(
            model=self.model_name,
            messages=self.build_messages(document),
            config=self.generation_config,
            stage=self.name,
        )

    async def agenerate(self, document: str) -> ChatResult:
        """One LLM call for ``document``; raises the client's typed errors."""
        request = self.build_request(document)
        if self.is_async_client:
            return await self.client.chat(request)  # type: ignore[union-attr,misc,no-any-return]
        # A sync client blocks: keep it off the loop (bounded by the default executor).
        return await asyncio.to_thread(self.client.chat, request)  # type: ignore[union-attr,arg-type]

    # -- record processing ------------------------------------------------------------
    def document_of(self, record: Mapping[str, Any]) -> str:
        if self.input_field not in record:
            raise MissingColumnError(self.name, self.input_field, list(record))
        value = record[self.input_field]
        return "" if value is None else str(value)

    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        try:
            document = self.document_of(record)
            result = await self.agenerate(document)
        except Exception as exc:
            return RecordOutcome(error=exc, calls=calls_of_error(exc, self))
        call = call_of(result)
        data = dict(record)
        data[self.output_field] = result.text
        return RecordOutcome(outputs=[Output(data, [call])], calls=[call])

    def setup(self) -> None:
        setup = getattr(self.client, "setup", None)
        if callable(setup):
            setup()


def call_of(result: ChatResult) -> LLMCall:
    return LLMCall(
        model=result.model,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        finish_reason=result.finish_reason,
        latency_s=result.latency_s,
        attempts=result.attempts,
        cached=result.cached,
    )


def calls_of_error(exc: BaseException, stage: SyntheticStage) -> list[LLMCall]:
    # A failed request still cost attempts (never tokens we were told about).
    attempts = int(getattr(exc, "attempts", 0) or 0)
    if attempts == 0:
        return []
    return [LLMCall(stage.model_name or "", 0, 0, None, 0.0, attempts)]


#: For users coming from NeMo Curator.
BaseSyntheticStage = SyntheticStage
