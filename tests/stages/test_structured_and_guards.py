"""Structured answers, the context guard and on_truncated, over real HTTP to the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from streamsynth.config import ConfigError, LLMSettings, settings_from_dict
from streamsynth.engine.errors import InvalidOutputError, StageConfigError, TruncatedOutputError
from streamsynth.kafka.dlq import Failure, dlq_headers, header_map
from streamsynth.llm import AiohttpChatClient, GenerationConfig, build_llm_client
from streamsynth.llm.errors import ContextLengthError
from streamsynth.llm.types import ChatRequest
from streamsynth.local.llm_simulator import LLMSimulator
from streamsynth.stages.nemotron_cc.tokenizer import ApproxTokenizer
from streamsynth.stages.synthetic import SyntheticStage

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 3},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["title", "rating", "topics"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "review", "schema": SCHEMA, "strict": True},
}


@pytest.fixture
async def client(llm_sim: LLMSimulator) -> AsyncIterator[AiohttpChatClient]:
    transport = AiohttpChatClient(llm_sim.base_url, timeout_s=10)
    yield transport
    await transport.aclose()


def stage(client: Any, **kwargs: Any) -> SyntheticStage:
    generation = kwargs.pop("generation", {})
    response_format = kwargs.pop("response_format", RESPONSE_FORMAT)
    return SyntheticStage(
        name="review",
        prompt="Review this text as JSON:\n\n{document}",
        output_field="review",
        client=client,
        model_name="sim-model",
        generation_config=GenerationConfig(
            temperature=0.0, max_tokens=64, response_format=response_format, **generation
        ),
        **kwargs,
    )


# -- structured answers ---------------------------------------------------------------
async def test_valid_first_answer_is_published_as_a_json_value(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    outcome = await stage(client).aprocess_record({"id": "d1", "text": "a fine text"})
    assert outcome.error is None, outcome.error
    value = outcome.outputs[0].data["review"]
    assert isinstance(value, dict)
    jsonschema.validate(value, SCHEMA)
    assert llm_sim.stats().requests == 1
    assert llm_sim.last_requests[-1]["response_format"] == RESPONSE_FORMAT  # unchanged


async def test_invalid_then_valid_answer_is_published_after_one_reask(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    record = {"id": "d2", "text": "text [[sim:json=invalid_then_valid]]"}
    outcome = await stage(client).aprocess_record(record)
    assert outcome.error is None, outcome.error
    jsonschema.validate(outcome.outputs[0].data["review"], SCHEMA)
    assert llm_sim.stats().requests == 2
    reask = llm_sim.last_requests[-1]
    roles = [m["role"] for m in reask["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert "not valid" in reask["messages"][-1]["content"]
    assert reask["response_format"] == RESPONSE_FORMAT
    # Both requests are accounted for on the output.
    assert len(outcome.outputs[0].calls) == 2 == len(outcome.calls)
    assert outcome.outputs[0].attempts == 2


@pytest.mark.parametrize("retries", [0, 2])
async def test_always_invalid_answer_fails_with_invalid_output_after_1_plus_retries(
    llm_sim: LLMSimulator, client: AiohttpChatClient, retries: int
) -> None:
    record = {"id": "d3", "text": "text [[sim:json=invalid]]"}
    outcome = await stage(client, parse_retries=retries).aprocess_record(record)
    assert isinstance(outcome.error, InvalidOutputError)
    assert llm_sim.stats().requests == 1 + retries
    assert len(outcome.calls) == 1 + retries
    headers = header_map(
        dlq_headers(
            Failure.from_exception(outcome.error, stage="review"), topic="t", partition=0, offset=7
        )
    )
    assert headers["streamsynth.error.reason"] == "invalid_output"
    assert "not valid JSON" in headers["streamsynth.error.message"]
    assert headers["streamsynth.error.attempts"] == str(1 + retries)


async def test_json_of_the_wrong_shape_is_invalid_with_the_schema_error(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    record = {"id": "d4", "text": "text [[sim:json=wrong_shape]]"}
    outcome = await stage(client, parse_retries=1).aprocess_record(record)
    assert isinstance(outcome.error, InvalidOutputError)
    assert "is not of type 'object'" in str(outcome.error)
    assert llm_sim.stats().requests == 2


async def test_json_object_mode_accepts_any_object(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    fmt = {"type": "json_object"}
    outcome = await stage(client, response_format=fmt).aprocess_record({"text": "x"})
    assert outcome.error is None, outcome.error
    assert isinstance(outcome.outputs[0].data["review"], dict)
    assert llm_sim.last_requests[-1]["response_format"] == fmt


def test_a_bad_schema_is_a_configuration_error(client: AiohttpChatClient) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(StageConfigError, match="schema is invalid"):
        stage(client, response_format=bad)
    base = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "input_topic": "in", "dlq_topic": "dlq"},
        "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
    }
    custom = {"task": "custom", "prompt": "{document}", "output_field": "o", "output_topic": "o"}
    with pytest.raises(ConfigError, match=r"stages\.0: .*schema is invalid"):
        settings_from_dict({**base, "stages": [{**custom, "response_format": bad}]})
    with pytest.raises(ConfigError, match="custom stages only"):
        settings_from_dict(
            {
                **base,
                "stages": [
                    {"task": "distill", "output_topic": "o", "response_format": RESPONSE_FORMAT}
                ],
            }
        )


# -- the context guard ----------------------------------------------------------------
def guarded(client: Any, **kwargs: Any) -> SyntheticStage:
    return SyntheticStage(
        name="summary",
        prompt="Summarize:\n\n{document}",
        output_field="summary",
        client=client,
        model_name="sim-model",
        generation_config=GenerationConfig(temperature=0.0, max_tokens=512),
        context_tokens=4096,
        min_output_tokens=64,
        tokenizer=ApproxTokenizer(),
        **kwargs,
    )


def words(n: int) -> str:
    vocabulary = ("river", "stone", "light", "market", "signal", "garden", "winter")
    return " ".join(vocabulary[i % 7] for i in range(n))  # one approx token each


async def test_a_50k_token_document_is_rejected_unsent(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    text = words(50_000)
    assert ApproxTokenizer().count(text) == 50_000
    outcome = await guarded(client).aprocess_record({"text": text})
    assert isinstance(outcome.error, ContextLengthError)
    assert outcome.error.error_type == "context_length" and not outcome.error.retryable
    assert outcome.calls == []
    assert llm_sim.stats().requests == 0
    reason = Failure.from_exception(outcome.error, stage="summary").reason
    assert reason == "context_length"


async def test_a_document_just_under_the_limit_is_sent_with_shrunk_max_tokens(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    s = guarded(client)
    empty_prompt = s.prompt_tokens(s.build_messages(""))
    # Leaves 100 tokens for the answer: fewer than max_tokens (512), more than the floor (64).
    text = words(4096 - empty_prompt - 100)
    outcome = await s.aprocess_record({"text": text})
    assert outcome.error is None, outcome.error
    sent = llm_sim.last_requests[-1]
    assert sent["max_tokens"] == 100
    assert outcome.outputs[0].calls[0].generation is not None
    assert outcome.outputs[0].calls[0].generation["max_tokens"] == 100  # lineage: as sent
    # One token less room than the floor: not sent.
    before = llm_sim.stats().requests
    tight = await s.aprocess_record({"text": words(4096 - empty_prompt - 63)})
    assert isinstance(tight.error, ContextLengthError)
    assert llm_sim.stats().requests == before


async def test_a_short_document_is_sent_unchanged(
    llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    outcome = await guarded(client).aprocess_record({"text": words(100)})
    assert outcome.error is None
    assert llm_sim.last_requests[-1]["max_tokens"] == 512


async def test_a_server_context_length_400_is_classified_and_never_retried(
    llm_sim: LLMSimulator,
) -> None:
    settings = LLMSettings(
        base_url=llm_sim.base_url,
        model="sim-model",
        max_attempts=5,
        backoff_base_s=0.01,
        cache={"kind": "none"},
    )
    resilient = build_llm_client(settings)
    try:
        request = ChatRequest(
            "sim-model", ({"role": "user", "content": "long [[sim:context_length]]"},)
        )
        with pytest.raises(ContextLengthError) as caught:
            await resilient.chat(request)
        assert caught.value.attempts == 1
        assert caught.value.status_code == 400
        assert llm_sim.stats().requests == 1
    finally:
        await resilient.aclose()


# -- on_truncated ---------------------------------------------------------------------
@pytest.mark.parametrize("action", [None, "keep", "filter", "dlq"])
async def test_on_truncated(client: AiohttpChatClient, action: str | None) -> None:
    s = SyntheticStage(
        name="s",
        prompt="{document}",
        output_field="o",
        client=client,
        model_name="sim-model",
        on_truncated=action,  # type: ignore[arg-type]
    )
    outcome = await s.aprocess_record({"text": "cut short [[sim:finish=length]]"})
    if action in (None, "keep"):
        assert outcome.outputs and outcome.outputs[0].finish_reason == "length"
    elif action == "filter":
        assert outcome.filtered == "truncated" and not outcome.outputs
        assert len(outcome.calls) == 1  # its cost is still reported
    else:
        assert isinstance(outcome.error, TruncatedOutputError)
        assert Failure.from_exception(outcome.error, stage="s").reason == "truncated"
        [spent] = outcome.calls  # the answer was generated: its cost is reported
        assert spent.finish_reason == "length" and spent.completion_tokens > 0


def test_guard_and_truncation_keys_are_checked_at_load() -> None:
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "input_topic": "in", "dlq_topic": "dlq"},
        "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "stages": [{"task": "distill", "output_topic": "o"}],
    }
    settings = settings_from_dict({**base, "llm": {**base["llm"], "context_tokens": 8192}})
    assert settings.llm.context_for("m") == 8192
    per_model = {**base["llm"], "context_tokens": {"m": 4096}}
    settings = settings_from_dict({**base, "llm": per_model})
    assert settings.llm.context_for("m") == 4096 and settings.llm.context_for("other") is None
    with pytest.raises(ConfigError, match=r"llm\.context_tokens"):
        settings_from_dict({**base, "llm": {**base["llm"], "context_tokens": 0}})
    keep = [{"task": "distill", "output_topic": "o", "on_truncated": "keep"}]
    with pytest.raises(ConfigError, match="on_truncated: keep is for custom stages"):
        settings_from_dict({**base, "stages": keep})
    with pytest.raises(ConfigError, match=r"stages\.0\.parse_retries"):
        settings_from_dict(
            {**base, "stages": [{"task": "distill", "output_topic": "o", "parse_retries": -1}]}
        )
