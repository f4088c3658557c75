"""Two model groups through a real worker (``streamsynth run``, real broker, loopback
simulators): one replica of one group is killed mid-run and restarted (issue #17).

Nothing is lost (every document has both stages' outputs, no dead letter), the other
group never sees a retry, and the dead replica's share moves to its sibling and back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from streamsynth.local.broker import free_port
from streamsynth.local.llm_simulator import LatencyModel, LLMSimulator, SimulatorConfig
from streamsynth.testing.harness import (
    TopicReader,
    Topics,
    WorkerProcess,
    custom_stage,
    doc,
    produce,
    worker_config,
)

DOCS = 1200


async def _sim(model: str, port: int = 0) -> LLMSimulator:
    sim = LLMSimulator(
        SimulatorConfig(port=port, models=[model], latency=LatencyModel("fixed", fixed_s=0.05))
    )
    await sim.start()
    return sim


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


async def test_a_replica_killed_mid_run_loses_nothing_and_its_share_comes_back(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    big = [await _sim("big", p) for p in ports]
    small = await _sim("small")
    revived: LLMSimulator | None = None
    topics = Topics.make(["qa", "para"])
    await topics.create(kafka_bootstrap, partitions=2)
    qa, para = (
        custom_stage("qa", topics.outputs["qa"]),
        custom_stage("para", topics.outputs["para"]),
    )
    qa["model"], para["model"] = "big", "small"
    cfg = worker_config(kafka_bootstrap, topics, big[0].base_url, [qa, para])
    cfg["llm"].pop("base_url")
    cfg["llm"].pop("model")
    cfg["llm"].update(
        models={
            "big": {"base_urls": [s.base_url for s in big]},
            "small": {"base_url": small.base_url},
        },
        max_concurrency=4,
        adaptive_concurrency=False,
        breaker_failures=2,
        breaker_reset_s=0.5,
        endpoint_cooldown_s=0.5,
        max_attempts=20,
        deadline_s=60,
    )
    cfg["worker"]["max_inflight_records"] = 100
    await produce(kafka_bootstrap, topics.input, [doc(i) for i in range(DOCS)])
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        # The stage's home replica takes most of its requests: that is the one to kill.
        await _until(lambda: sum(s.stats().requests for s in big) >= 150, 60, "warm-up")
        victim = max((0, 1), key=lambda i: big[i].stats().requests)
        sibling = big[1 - victim]
        await big[victim].stop()
        before = sibling.stats().requests
        await _until(lambda: sibling.stats().requests >= before + 150, 60, "its share moved")
        revived = await _sim("big", ports[victim])
        await _until(lambda: revived is not None and revived.stats().requests >= 40, 60, "back")
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: (
                    len(set(r.ids(topics.outputs["qa"]))) >= DOCS
                    and len(set(r.ids(topics.outputs["para"]))) >= DOCS
                ),
                120,
                "every document through both stages",
            )
            await reader.settle(quiet_s=0.5)
    finally:
        worker.stop()
        for sim in [*big, small] + ([revived] if revived else []):
            await sim.stop()
    assert reader.records[topics.dlq] == []
    for stage in ("qa", "para"):
        assert set(reader.ids(topics.outputs[stage])) == {f"doc-{i}" for i in range(DOCS)}
    # The other group: one attempt per document, every one answered.
    assert small.stats().requests == DOCS and small.stats().status_counts == {200: DOCS}
    # After it came back, the restarted replica took a real share (home again).
    assert revived is not None and revived.stats().requests >= 40
