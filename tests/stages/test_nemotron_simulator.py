"""Each Nemotron-CC task against the real LLM simulator over HTTP (loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.local.llm_simulator import LLMSimulator
from streamsynth.stages.nemotron_cc import SEGMENT_INDEX, TASK_SPECS, TASKS, build_task_stage

DOCUMENT = "\n".join(
    f"In {1850 + 7 * i} the Halden observatory recorded {i + 3} comets, and its astronomers "
    "published detailed tables of their orbits, brightness and tails for other observatories."
    for i in range(6)
)


@pytest.fixture
async def client(llm_sim: LLMSimulator) -> AsyncIterator[AiohttpChatClient]:
    http = AiohttpChatClient(llm_sim.base_url, timeout_s=10)
    yield http
    await http.aclose()


@pytest.mark.parametrize("task", list(TASKS))
async def test_task_produces_outputs_through_the_simulator(
    task: str, llm_sim: LLMSimulator, client: AiohttpChatClient
) -> None:
    spec = TASK_SPECS[task]
    stage = build_task_stage(task, client=client, model_name="sim-model")
    outcome = await stage.aprocess_record({"id": "obs-1", "text": DOCUMENT})

    assert outcome.error is None, outcome.error
    assert outcome.filtered is None
    assert outcome.outputs
    for output in outcome.outputs:
        produced = output.data[stage.output_field]
        assert isinstance(produced, str) and produced.strip()
        if spec.prefix is not None:
            assert spec.prefix not in produced  # required prefix sliced off
        assert stage.tokenizer.count(produced) >= spec.min_output_tokens
        if spec.unit == "segment":
            assert output.data[SEGMENT_INDEX] == 0 and output.data["text"] == DOCUMENT
    if task == "diverse_qa":
        assert outcome.outputs[0].data["diverse_qa"].startswith(DOCUMENT + "\n\nQuestion: ")
    if task == "knowledge_list":
        assert not any(line.startswith("- ") for line in produced.splitlines())
    # Usage came back from the server, and the task's sampling parameters went out.
    assert outcome.calls and outcome.calls[0].completion_tokens > 0
    [body] = list(llm_sim.last_requests)
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (
        0.5, 0.9, spec.sampling.max_tokens,
    )  # fmt: skip
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


@pytest.mark.parametrize("task", list(TASKS))
async def test_length_finish_from_the_server_drops_the_record_as_truncated(
    task: str, client: AiohttpChatClient
) -> None:
    stage = build_task_stage(task, client=client, model_name="sim-model")
    outcome = await stage.aprocess_record({"text": DOCUMENT + "\n[[sim:finish=length]]"})
    assert outcome.error is None
    assert outcome.filtered == "truncated"
    assert [c.finish_reason for c in outcome.calls] == ["length"]


async def test_server_error_fails_the_record(client: AiohttpChatClient) -> None:
    stage = build_task_stage("distill", client=client, model_name="sim-model")
    outcome = await stage.aprocess_record({"text": DOCUMENT + "\n[[sim:500]]"})
    assert outcome.error is not None and outcome.outputs == []
    assert getattr(outcome.error, "status_code", None) == 500
