"""The worker in-process (real broker, a controllable client): backpressure and shutdown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kafka_helpers import TopicReader, Topics, committed, doc, produce

from streamsynth.config import Settings, settings_from_dict
from streamsynth.kafka.worker import StageSpec, Worker
from streamsynth.llm.types import ChatRequest, ChatResult, Usage
from streamsynth.metrics.registry import Metrics
from streamsynth.stages.synthetic import SyntheticStage

pytestmark = pytest.mark.integration


class GatedClient:
    """Answers once ``gate`` is set; records marked "[[hold]]" wait for ``hold`` instead."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.hold = asyncio.Event()
        self.waiting = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        event = self.hold if "[[hold]]" in request.messages[-1]["content"] else self.gate
        self.waiting += 1
        try:
            await event.wait()
        finally:
            self.waiting -= 1
        return ChatResult(["answer"], ["stop"], Usage(3, 1), request.model)

    async def aclose(self) -> None:
        return None


def settings_for(bootstrap: str, topics: Topics, **worker: Any) -> Settings:
    return settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": topics.group,
                "input_topic": topics.input,
                "dlq_topic": topics.dlq,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500,
                "linger_ms": 1,
            },
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "stages": [
                {
                    "task": "custom",
                    "name": "s",
                    "prompt": "{document}",
                    "output_field": "s",
                    "output_topic": topics.outputs["s"],
                },
            ],
            "worker": {"max_batch_wait_ms": 20, "commit_interval_s": 0.1, **worker},
            "metrics": {"enabled": False},
        }
    )


def make_worker(settings: Settings, client: GatedClient, topic: str) -> tuple[Worker, Metrics]:
    stage = SyntheticStage(
        name="s", prompt="{document}", output_field="s", client=client, model_name="m"
    )
    metrics = Metrics()
    return Worker(settings, stages=[StageSpec("s", stage, topic)], metrics=metrics), metrics


async def wait_until(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_full_window_pauses_partitions_and_resumes(kafka_bootstrap: str) -> None:
    topics = Topics.make(["s"])
    await topics.create(kafka_bootstrap, partitions=2)
    n, window = 120, 20
    await produce(kafka_bootstrap, topics.input, [doc(i) for i in range(n)])
    settings = settings_for(
        kafka_bootstrap, topics, max_inflight_records=window, max_batch_records=50
    )
    client = GatedClient()
    worker, metrics = make_worker(settings, client, topics.outputs["s"])
    task = asyncio.get_running_loop().create_task(worker.run())
    try:
        await wait_until(lambda: worker.inflight >= window, 30, "a full window")
        await wait_until(lambda: metrics.partitions_paused._value.get() == 2, 5, "pause")
        # The window holds: fetching stopped while every record waits on the LLM.
        for _ in range(10):
            assert worker.inflight <= window
            assert client.waiting <= window
            await asyncio.sleep(0.05)
        assert metrics.partitions_assigned._value.get() == 2  # still in the group
        client.gate.set()
        async with TopicReader(kafka_bootstrap, [topics.outputs["s"]]) as reader:
            await reader.until(lambda r: len(r.records[topics.outputs["s"]]) >= n, 30, "outputs")
        await wait_until(lambda: metrics.partitions_paused._value.get() == 0, 5, "resume")
        ends = await committed(kafka_bootstrap, topics.group, topics.input, 2)
        deadline = time.monotonic() + 10
        while sum(ends.values()) != n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            ends = await committed(kafka_bootstrap, topics.group, topics.input, 2)
        assert sum(ends.values()) == n
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def test_shutdown_timeout_bounds_the_drain_and_commits_only_finished(
    kafka_bootstrap: str,
) -> None:
    topics = Topics.make(["s"])
    await topics.create(kafka_bootstrap, partitions=1)
    records = [doc(i) for i in range(10)] + [doc(10, "[[hold]] never answers")]
    records += [doc(i) for i in range(11, 20)]
    await produce(kafka_bootstrap, topics.input, records)
    settings = settings_for(kafka_bootstrap, topics, shutdown_timeout_s=1.0)
    client = GatedClient()
    client.gate.set()
    worker, _ = make_worker(settings, client, topics.outputs["s"])
    task = asyncio.get_running_loop().create_task(worker.run())
    async with TopicReader(kafka_bootstrap, [topics.outputs["s"]]) as reader:
        await reader.until(lambda r: len(r.records[topics.outputs["s"]]) >= 19, 30, "outputs")
    assert worker.inflight == 1
    start = time.monotonic()
    worker.request_stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - start < 1.0 + 3.0
    # The unfinished record at offset 10 holds the commit: it will be redelivered.
    assert await committed(kafka_bootstrap, topics.group, topics.input, 1) == {0: 10}
    client.hold.set()
