"""The simulator's JSON answers satisfy the schema they are asked for (checked with jsonschema)."""

from __future__ import annotations

from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest

from streamsynth.local.llm_simulator import LLMSimulator

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object"},
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 12, "maxLength": 20},
            "score": {"type": "integer", "minimum": 1, "maximum": 3},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["a", "b", "c"]},
            "fixed": {"const": 7},
            "maybe": {"type": ["null", "string"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
            "nested": {
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"],
                "additionalProperties": False,
            },
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["title", "score", "tags", "nested"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "object", "properties": {"q": {"type": "string"}}}},
]


def body(schema: dict[str, Any], text: str = "question") -> bytes:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    messages = [{"role": "user", "content": text}]
    return orjson.dumps({"model": "sim-model", "messages": messages, "response_format": fmt})


async def post(sim: LLMSimulator, raw: bytes) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + "/chat/completions", data=raw) as resp,
    ):
        return resp.status, await resp.read()


async def answer(sim: LLMSimulator, raw: bytes) -> str:
    status, data = await post(sim, raw)
    assert status == 200, data
    return str(orjson.loads(data)["choices"][0]["message"]["content"])


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_answers_satisfy_the_schema(llm_sim: LLMSimulator, schema: dict[str, Any]) -> None:
    sim = llm_sim
    for i in range(20):  # different prompts draw different values
        text = await answer(sim, body(schema, f"question {i}"))
        jsonschema.validate(orjson.loads(text), schema)


async def test_markers_make_it_misbehave(llm_sim: LLMSimulator) -> None:
    sim = llm_sim
    schema = SCHEMAS[1]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await answer(sim, body(schema, "q [[sim:json=invalid]]")))
    wrong = orjson.loads(await answer(sim, body(schema, "q [[sim:json=wrong_shape]]")))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)
    first = body(schema, "q [[sim:json=invalid_then_valid]]")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await answer(sim, first))
    reask = orjson.loads(first)
    reask["messages"] += [
        {"role": "assistant", "content": "{broken"},
        {"role": "user", "content": "again"},
    ]
    jsonschema.validate(orjson.loads(await answer(sim, orjson.dumps(reask))), schema)
    status, data = await post(sim, body(schema, "q [[sim:context_length]]"))
    assert status == 400 and b"maximum context length" in data
