"""Model groups, prefix affinity and priority end to end: the client built from config,
real HTTP against loopback simulators (issue #17).

Every load loop here is bounded in count and in time, and phases move on when a
condition holds (polled with a deadline), never after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from typer.testing import CliRunner

from streamsynth.cli.main import app
from streamsynth.config import ConfigError, LLMSettings, settings_from_dict
from streamsynth.llm.factory import build_llm_client
from streamsynth.llm.groups import affinity_key
from streamsynth.llm.observer import LLMObserver
from streamsynth.llm.resilient import ResilientClient
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig
from streamsynth.local.broker import free_port
from streamsynth.local.llm_simulator import (
    LatencyModel,
    LLMSimulator,
    ServingConfig,
    SimulatorConfig,
)

CONFIG = GenerationConfig(max_tokens=8)


def _request(model: str, stage: str, i: int) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=(
            {"role": "system", "content": f"You are the {stage} writer."},
            {"role": "user", "content": f"Rewrite document {i}."},
        ),
        config=CONFIG,
        stage=stage,
    )


async def _simulator(model: str, *, port: int = 0, **kw: Any) -> LLMSimulator:
    config = SimulatorConfig(port=port, models=[model], **kw)
    config.latency = kw.get("latency", LatencyModel("fixed", fixed_s=0.005))
    sim = LLMSimulator(config)
    await sim.start()
    return sim


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Answer:
    at: float
    stage: str
    model: str
    endpoint: str
    attempts: int


@dataclass
class Load:
    """Closed-loop senders, one per (model, stage), until stopped or out of budget."""

    client: ResilientClient
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def sender(self, model: str, stage: str, budget: int, deadline: float) -> None:
        for i in range(budget):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            self.sent += 1
            try:
                result = await self.client.chat(_request(model, stage, i))
            except Exception as exc:  # counted: the test asserts there are none
                self.errors.append(exc)
                continue
            assert isinstance(result, ChatResult)
            self.answers.append(
                Answer(time.monotonic(), stage, model, result.endpoint or "", result.attempts)
            )

    def count(self, pred: Callable[[Answer], bool]) -> int:
        return sum(1 for a in self.answers if pred(a))


def _stages_homed_on_both(client: ResilientClient, model: str, want: int) -> list[str]:
    """Stage names whose home replicas cover both of the group's replicas, ``want`` each."""
    pool = client.groups.by_name[model].pool
    picked: dict[str, list[str]] = {ep.url: [] for ep in pool.endpoints}
    for i in range(200):
        stage = f"{model}-stage-{i}"
        key = affinity_key(_request(model, stage, 0))
        assert key is not None
        home = pool.home_of(key).url
        if len(picked[home]) < want:
            picked[home].append(stage)
        if all(len(v) == want for v in picked.values()):
            return [s for v in picked.values() for s in v]
    raise AssertionError("hashing never covered both replicas")


async def test_two_groups_one_replica_killed_and_restored() -> None:
    big_ports = [free_port(), free_port()]
    big = [await _simulator("big", port=p) for p in big_ports]
    small = [await _simulator("small"), await _simulator("small")]
    settings = LLMSettings.model_validate(
        {
            "models": {
                "big": {"base_urls": [s.base_url for s in big]},
                "small": {"base_urls": [s.base_url for s in small]},
            },
            "max_concurrency": 8,
            "adaptive_concurrency": False,
            "breaker_failures": 2,
            "breaker_reset_s": 0.3,
            "endpoint_cooldown_s": 0.3,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "max_attempts": 10,
            "deadline_s": 30,
            "timeout_s": 5,
            "cache": {"kind": "none"},
        }
    )
    client = build_llm_client(settings)
    load = Load(client)
    revived: LLMSimulator | None = None
    try:
        big_stages = _stages_homed_on_both(client, "big", 2)
        small_stages = _stages_homed_on_both(client, "small", 2)
        big_pool = client.groups.by_name["big"].pool
        home = {
            s: big_pool.home_of(affinity_key(_request("big", s, 0)) or "").url for s in big_stages
        }
        victim = big[1].base_url
        victims = {s for s, url in home.items() if url == victim}
        deadline = time.monotonic() + 60
        tasks = [
            asyncio.ensure_future(load.sender(m, s, 3000, deadline))
            for m, stages in (("big", big_stages), ("small", small_stages))
            for s in stages
        ]

        def from_victim_stages(url: str, after: float) -> int:
            return load.count(lambda a: a.stage in victims and a.endpoint == url and a.at > after)

        await _until(lambda: from_victim_stages(victim, 0) >= 20, 20, "victim replica warm")
        await big[1].stop()  # in-flight requests on it are cut off
        killed_at = time.monotonic()  # nothing can come from it after this
        survivor = big[0].base_url
        await _until(
            lambda: from_victim_stages(survivor, killed_at) >= 40, 20, "its share moved over"
        )
        assert from_victim_stages(victim, killed_at + 0.2) == 0  # answers read late
        restored_at = time.monotonic()
        revived = await _simulator("big", port=big_ports[1])
        await _until(
            lambda: from_victim_stages(victim, restored_at) >= 20, 20, "its share moved back"
        )
        moved_back_at = time.monotonic()
        await _until(
            lambda: load.count(lambda a: a.model == "big" and a.at > moved_back_at) >= 40,
            10,
            "steady again",
        )
        load.stop.set()
        await asyncio.gather(*tasks)
    finally:
        load.stop.set()
        await client.aclose()
        for sim in [*big, *small] + ([revived] if revived else []):
            await sim.stop()

    # Nothing lost: every request sent was answered.
    assert load.errors == [] and len(load.answers) == load.sent
    # After the move back, each victim stage is served by its home again.
    late = [a for a in load.answers if a.stage in victims and a.at > moved_back_at]
    assert late and sum(a.endpoint == victim for a in late) >= 0.9 * len(late)
    # The other group never noticed: one attempt each, always on its stage's home.
    small_pool = client.groups.by_name["small"].pool
    small_home = {
        s: small_pool.home_of(affinity_key(_request("small", s, 0)) or "").url for s in small_stages
    }
    small_answers = [a for a in load.answers if a.model == "small"]
    assert len(small_answers) >= 100
    assert all(a.attempts == 1 for a in small_answers)
    assert all(a.endpoint == small_home[a.stage] for a in small_answers)


@dataclass
class Waits(LLMObserver):
    by_stage: dict[str, list[float]] = field(default_factory=dict)

    def on_queue_wait(self, *, stage: str, model_group: str, seconds: float) -> None:
        self.by_stage.setdefault(stage, []).append(seconds)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _config(url: str, **llm: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "input_topic": "in", "dlq_topic": "dlq"},
        "llm": {
            "models": {"m": {"base_url": url, **llm}},
            "max_concurrency": 4,
            "adaptive_concurrency": False,
            "deadline_s": 60,
            "cache": {"kind": "none"},
        },
        "stages": [
            {"task": "custom", "name": n, "prompt": "{document}", "output_field": n,
             "output_topic": f"out.{n}", "model": "m", "priority": p}
            for n, p in (("fast", 0), ("bulk", 10))
        ],
    }  # fmt: skip


async def _client_for(data: dict[str, Any], observer: LLMObserver | None = None) -> ResilientClient:
    from streamsynth.stages.factory import build_stages

    settings = settings_from_dict(data)
    client = build_llm_client(settings.llm, observer=observer)
    build_stages(settings, client)  # registers each stage's priority on the client
    return client


async def test_priority_zero_waits_far_less_than_priority_ten_on_a_saturated_group() -> None:
    sim = await _simulator("m", latency=LatencyModel("fixed", fixed_s=0.02))
    waits = Waits()
    client = await _client_for(_config(sim.base_url), waits)
    try:
        assert client.priority_of("bulk") == 10 and client.priority_of("fast") == 0
        # The bulk stage's backlog saturates the group's 4 slots for seconds.
        bulk = [asyncio.ensure_future(client.chat(_request("m", "bulk", i))) for i in range(400)]
        await _until(lambda: client.pool.endpoints[0].limiter.waiting > 300, 10, "backlog")
        fast_done = 0

        async def fast_loop(offset: int) -> None:
            nonlocal fast_done
            for i in range(60):
                if all(t.done() for t in bulk):
                    return
                await client.chat(_request("m", "fast", offset + i))
                fast_done += 1

        await asyncio.wait_for(asyncio.gather(fast_loop(0), fast_loop(1000)), 60)
        await asyncio.wait_for(asyncio.gather(*bulk), 60)
    finally:
        await client.aclose()
        await sim.stop()
    assert fast_done >= 50, "too few priority-0 samples while the group was saturated"
    fast, slow = _p99(waits.by_stage["fast"]), _p99(waits.by_stage["bulk"])
    assert len(waits.by_stage["bulk"]) == 400
    assert fast <= slow / 5, (fast, slow)


async def _send_both(client: ResilientClient) -> None:
    await asyncio.gather(
        *(client.chat(_request("m", s, i)) for s in ("fast", "bulk") for i in range(10))
    )


@pytest.mark.parametrize("send", [True, False])
async def test_priority_field_is_sent_only_when_the_group_says_so(send: bool) -> None:
    # A server started with the priority policy when we send it; a FCFS one (which
    # rejects any priority but 0) when we do not.
    scheduling: Literal["fcfs", "priority"] = "priority" if send else "fcfs"
    sim = await _simulator("m", serving=ServingConfig(replicas=1, scheduling=scheduling))
    client = await _client_for(_config(sim.base_urls[0], send_priority=send))
    try:
        await _send_both(client)
    finally:
        await client.aclose()
        await sim.stop()
    bodies = list(sim.last_requests)
    assert len(bodies) == 20 and sim.stats().status_counts == {200: 20}
    if send:
        got = sorted({(b["messages"][0]["content"], b["priority"]) for b in bodies})
        assert got == [("You are the bulk writer.", 10), ("You are the fast writer.", 0)]
    else:
        assert all("priority" not in b for b in bodies)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["stages"][1].update(model="nope"), "stages.1.model"),
        (lambda d: d["llm"]["models"]["m"].pop("base_url"), "llm.models.m.base_urls"),
        (lambda d: d["llm"].update(model="other"), "llm.model"),
    ],
)
def test_config_errors_name_the_field(
    change: Callable[[dict[str, Any]], None], field: str, tmp_path: Path
) -> None:
    data = _config("http://127.0.0.1:1/v1")
    change(data)
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    assert f"{field}:" in str(info.value)
    # The command line: exit 2 and one error naming the field, before any connection.
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        result.stderr.startswith("error: invalid configuration:") and f"{field}:" in result.stderr
    )


async def test_global_bound_caps_the_worker_across_groups() -> None:
    sim = LLMSimulator(
        SimulatorConfig(models=["a", "b"], latency=LatencyModel("fixed", fixed_s=0.02))
    )
    await sim.start()
    settings = LLMSettings.model_validate(
        {
            "models": {"a": {"base_url": sim.base_url}, "b": {"base_url": sim.base_url}},
            "max_concurrency": 8,
            "adaptive_concurrency": False,
            "global_max_concurrency": 3,
            "cache": {"kind": "none"},
        }
    )
    client = build_llm_client(settings)
    try:
        assert client.concurrency_limit == 3  # 2 groups x 8, capped
        jobs = [client.chat(_request(m, f"{m}-stage", i)) for m in ("a", "b") for i in range(40)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), 30)
    finally:
        await client.aclose()
        await sim.stop()
    assert len(results) == 80 and {r.model for r in results} == {"a", "b"}
    assert sim.stats().max_inflight == 3  # each group alone would have sent 8
