"""SyntheticStage end to end over real HTTP against the LLM simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamsynth.engine import (
    ERROR_COLUMN,
    DocumentBatch,
    MissingColumnError,
    SourceRef,
    StageConfigError,
)
from streamsynth.llm import (
    AiohttpChatClient,
    AsyncOpenAIClient,
    GenerationConfig,
    LLMClient,
    OpenAIClient,
)
from streamsynth.llm.client import AsyncLLMClient
from streamsynth.local.llm_simulator import LLMSimulator, SimulatorProcess
from streamsynth.stages.synthetic import SyntheticStage

PROMPT = "Rewrite the following text in plain words.\n\nText: {document}"

Client = AsyncLLMClient | LLMClient
CLIENTS: dict[str, Callable[[str], Client]] = {
    "aiohttp": lambda url: AiohttpChatClient(url, timeout_s=10),
    "async-openai": lambda url: AsyncOpenAIClient(url, timeout_s=10),
    "sync-openai": lambda url: OpenAIClient(url, timeout_s=10),
}
ASYNC_KINDS = ["aiohttp", "async-openai"]


@pytest.fixture(scope="module")
def sim_process() -> Iterator[SimulatorProcess]:
    """A simulator in another process: needed where the test blocks its own thread."""
    with SimulatorProcess() as proc:
        yield proc


def make_stage(client: Client, **kwargs: Any) -> SyntheticStage:
    return SyntheticStage(
        prompt=kwargs.pop("prompt", PROMPT), client=client, model_name="sim-model", **kwargs
    )


def docs(n: int, prefix: str = "document") -> DocumentBatch:
    return DocumentBatch.from_records(
        [{"id": i, "text": f"{prefix} {i} about rivers"} for i in range(n)]
    )


async def close(client: Client) -> None:
    if isinstance(client, OpenAIClient):
        client.close()
    else:
        await client.aclose()  # type: ignore[union-attr]


def words(text: str) -> int:
    return len(text.split())


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("Summarize this.", "{document}"),
        ("Summarize {document} for {audience}.", "unknown placeholders {audience}"),
        ("Broken {document", "invalid template"),
        ("", "'prompt' is required"),
    ],
)
def test_template_errors(prompt: str, fragment: str) -> None:
    client = AiohttpChatClient("http://127.0.0.1:1/v1")
    with pytest.raises(StageConfigError) as info:
        SyntheticStage(prompt=prompt, client=client, model_name="m", name="S1")
    assert fragment in str(info.value) and "'S1'" in str(info.value)


def test_literal_braces_are_allowed() -> None:
    stage = make_stage(AiohttpChatClient("http://127.0.0.1:1/v1"), prompt='{{"k": 1}} {document}')
    assert stage.format_prompt("x") == '{"k": 1} x'


# -- message construction --------------------------------------------------------------


async def test_messages_without_system_prompt(llm_sim: LLMSimulator) -> None:
    client = AiohttpChatClient(llm_sim.base_url)
    stage = make_stage(client)
    out = await stage.aprocess(docs(1))
    await client.aclose()
    assert llm_sim.last_requests[-1]["messages"] == [
        {"role": "user", "content": PROMPT.format(document="document 0 about rivers")}
    ]
    assert out.to_records()[0]["generated"]


async def test_messages_with_system_prompt_and_generation_config(llm_sim: LLMSimulator) -> None:
    client = AiohttpChatClient(llm_sim.base_url)
    config = GenerationConfig(max_tokens=40, temperature=0.5, top_k=7)
    stage = make_stage(client, system_prompt="You are terse.", generation_config=config)
    await stage.aprocess(docs(1))
    await client.aclose()
    sent = llm_sim.last_requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": PROMPT.format(document="document 0 about rivers")},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["top_k"]) == (40, 0.5, 7)


# -- missing input column --------------------------------------------------------------


async def test_missing_column_on_batch_and_record(llm_sim: LLMSimulator) -> None:
    client = AiohttpChatClient(llm_sim.base_url)
    stage = make_stage(client, input_field="body", name="Rewriter")
    with pytest.raises(MissingColumnError) as info:
        stage.check_columns(docs(2).columns)
    assert (info.value.stage, info.value.column) == ("Rewriter", "body")
    with pytest.raises(MissingColumnError):
        await stage.aprocess(docs(2))
    outcome = await stage.aprocess_record({"text": "no body here"})
    await client.aclose()
    assert isinstance(outcome.error, MissingColumnError)
    assert "'Rewriter'" in str(outcome.error) and "'body'" in str(outcome.error)
    assert outcome.outputs == [] and outcome.calls == []
    assert llm_sim.stats().requests == 0  # nothing was sent


# -- all three client kinds ------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_every_client_kind_fills_outputs_and_stats(llm_sim: LLMSimulator, kind: str) -> None:
    client = CLIENTS[kind](llm_sim.base_url)
    stage = make_stage(client, generation_config=GenerationConfig(max_tokens=30))
    try:
        records = (await stage.aprocess(docs(8))).to_records()
    finally:
        await close(client)
    assert [r["id"] for r in records] == list(range(8))
    stats = llm_sim.stats()
    assert stats.status_counts == {200: 8}
    for r in records:
        assert r[ERROR_COLUMN] is None
        assert r["_completion_tokens"] == words(r["generated"])
        assert r["_prompt_tokens"] == words(PROMPT.format(document=r["text"]))
        assert r["_attempts"] == 1 and r["_latency_s"] > 0
    assert sum(r["_prompt_tokens"] for r in records) == stats.prompt_tokens
    assert sum(r["_completion_tokens"] for r in records) == stats.completion_tokens


async def test_usage_and_finish_reason_match_the_server(llm_sim: LLMSimulator) -> None:
    client = AiohttpChatClient(llm_sim.base_url)
    stage = make_stage(client, generation_config=GenerationConfig(max_tokens=12))
    batch = DocumentBatch.from_records(
        [
            {"text": "short [[sim:reply=Just four words here]]"},
            {"text": " ".join(["long"] * 100)},  # natural answer > 12 words: truncated
            {"text": "flagged [[sim:reply=ok]] [[sim:finish=length]]"},
        ]
    )
    records = (await stage.aprocess(batch)).to_records()
    await client.aclose()
    assert records[0]["generated"] == "Just four words here"
    assert [r["_finish_reason"] for r in records] == ["stop", "length", "length"]
    assert [r["_completion_tokens"] for r in records] == [4, 12, 1]
    sent = [req["messages"][0]["content"] for req in llm_sim.last_requests]
    assert [r["_prompt_tokens"] for r in records] == [
        words(next(s for s in sent if r["text"] in s)) for r in records
    ]


# -- partial failure -------------------------------------------------------------------


async def test_three_failures_in_200_rows_keep_the_rest(llm_sim: LLMSimulator) -> None:
    client = AiohttpChatClient(llm_sim.base_url)
    stage = make_stage(client, generation_config=GenerationConfig(max_tokens=20))
    bad = {17, 101, 180}
    records_in = [
        {"id": i, "text": f"doc {i}" + (" [[sim:400]]" if i in bad else "")} for i in range(200)
    ]
    sources = [SourceRef("docs", 0, 1000 + i) for i in range(200)]
    out = await stage.aprocess(DocumentBatch.from_records(records_in, sources))
    await client.aclose()
    records = out.to_records()
    assert len(records) == 200
    assert [s.offset for s in out.sources() if s] == [1000 + i for i in range(200)]
    failed = [r for r in records if r[ERROR_COLUMN] is not None]
    assert sorted(r["id"] for r in failed) == sorted(bad)
    for r in failed:
        assert r[ERROR_COLUMN].startswith("BadRequestError: HTTP 400")
        assert r["generated"] is None and r["_prompt_tokens"] == 0
    good = [r for r in records if r[ERROR_COLUMN] is None]
    assert len(good) == 197 and all(r["generated"] for r in good)
    assert llm_sim.stats().status_counts == {200: 197, 400: 3}


# -- the synchronous API ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_one_stage_serves_ten_batches_with_process(
    sim_process: SimulatorProcess, kind: str
) -> None:
    client = CLIENTS[kind](sim_process.base_url)
    stage = make_stage(client, generation_config=GenerationConfig(max_tokens=16))
    sim_process.reset_stats()
    for i in range(10):
        out = stage.process(docs(5, prefix=f"batch{i}"))
        records = out.to_records()
        assert len(records) == 5 and all(r[ERROR_COLUMN] is None for r in records)
        assert all(r["generated"] for r in records)
    assert sim_process.stats().status_counts == {200: 50}
    if isinstance(client, OpenAIClient):
        client.close()
    else:
        asyncio.run(client.aclose())  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_process_inside_a_running_loop(sim_process: SimulatorProcess, kind: str) -> None:
    client = CLIENTS[kind](sim_process.base_url)
    stage = make_stage(client, generation_config=GenerationConfig(max_tokens=16))
    assert asyncio.get_running_loop().is_running()
    first = stage.process(docs(4))  # runs on the background loop, blocking this one
    # The same stage and client then serve this loop too, with their own pool.
    second = await stage.aprocess(docs(4))
    third = stage.process(docs(4))
    await close(client)
    for out in (first, second, third):
        records = out.to_records()
        assert len(records) == 4 and all(r[ERROR_COLUMN] is None for r in records)
    assert first.to_records()[0]["generated"] == second.to_records()[0]["generated"]
