"""The serving-mode capacity model: running slots, queueing, prefix cache, priority,
vLLM-named metrics -- in process and over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest

from streamsynth.local.llm_simulator import LLMSimulator, SimulatorConfig, SimulatorProcess
from streamsynth.local.serving import Replica, ServingConfig

# Small and fast: a step takes 4 ms + 0.2 ms per running sequence.
FAST = ServingConfig(max_num_seqs=8, decode_base_s=0.004, decode_per_seq_s=0.0002)
PROMPT = [f"w{i}" for i in range(40)]


async def _saturate(replica: Replica, clients: int, seconds: float) -> tuple[float, float, int]:
    """``clients`` closed-loop clients for ``seconds``: (tokens/s, median latency, peak waiting)."""
    latencies: list[float] = []
    peak_waiting = 0
    deadline = time.monotonic() + seconds
    start_tokens = replica.stats.generation_tokens

    async def client() -> None:
        nonlocal peak_waiting
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            await replica.generate(PROMPT, 50)
            latencies.append(time.monotonic() - t0)
            peak_waiting = max(peak_waiting, replica.waiting)

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - t0
    rate = (replica.stats.generation_tokens - start_tokens) / elapsed
    return rate, statistics.median(latencies), peak_waiting


async def test_throughput_grows_with_the_batch_then_saturates_at_max_num_seqs() -> None:
    replica = Replica(FAST)
    replica.start()
    try:
        half, lat_half, _ = await _saturate(replica, 4, 1.5)
        full, lat_full, waiting_full = await _saturate(replica, 8, 1.5)
        over, lat_over, waiting_over = await _saturate(replica, 16, 1.5)
    finally:
        await replica.stop()
    # Batching: twice the sequences, each a little slower, the replica much faster.
    assert full > 1.4 * half, (half, full)
    assert lat_full < 1.5 * lat_half
    # Past max_num_seqs: no more throughput, only a queue and twice the latency.
    assert over < 1.15 * full, (full, over)
    assert waiting_full == 0 and waiting_over >= 4
    assert lat_over > 1.6 * lat_full, (lat_full, lat_over)
    # The analytic capacity bounds what was measured (prefill is extra work).
    assert full <= FAST.decode_capacity_tokens_per_s() * 1.05


async def test_prefix_cache_prefills_a_shared_prefix_once() -> None:
    replica = Replica(ServingConfig(block_tokens=16))
    replica.start()
    try:
        system = [f"sys{i}" for i in range(64)]
        first = await replica.generate([*system, "doc", "one"], 5)
        second = await replica.generate([*system, "doc", "two", "more"], 5)
        other = await replica.generate(["other", *system], 5)
    finally:
        await replica.stop()
    assert first.cached_tokens == 0
    assert second.cached_tokens == 64  # the four shared blocks, not the differing tail
    assert other.cached_tokens == 0  # a prefix cache: a shifted copy does not hit
    assert replica.stats.cache_hits == 64
    assert replica.stats.cache_queries == 66 + 67 + 65


async def test_priority_scheduling_runs_lower_values_first() -> None:
    cfg = ServingConfig(
        max_num_seqs=1, decode_base_s=0.002, decode_per_seq_s=0.0, scheduling="priority"
    )
    replica = Replica(cfg)
    replica.start()
    order: list[str] = []

    async def run(name: str, priority: int) -> None:
        await replica.generate(PROMPT, 20, priority)
        order.append(name)

    try:
        busy = asyncio.ensure_future(run("busy", 0))
        await asyncio.sleep(0.01)  # it holds the only slot
        late = [asyncio.ensure_future(run("low", 10)), asyncio.ensure_future(run("high", -1))]
        await asyncio.sleep(0)
        assert replica.waiting == 2
        await asyncio.gather(busy, *late)
    finally:
        await replica.stop()
    assert order == ["busy", "high", "low"]


async def test_cancelled_request_frees_its_slot() -> None:
    replica = Replica(ServingConfig(max_num_seqs=1, decode_base_s=0.01, decode_per_seq_s=0.0))
    replica.start()
    try:
        hog = asyncio.ensure_future(replica.generate(PROMPT, 100_000))
        await asyncio.sleep(0.02)
        assert replica.running == 1
        hog.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hog
        result = await asyncio.wait_for(replica.generate(PROMPT, 3), 5.0)
    finally:
        await replica.stop()
    assert result.ttft_s < 1.0 and replica.running == 0


async def _chat(
    session: aiohttp.ClientSession, url: str, text: str, **extra: object
) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = {
        "model": "sim-model",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        **extra,
    }
    async with session.post(url + "/chat/completions", json=body) as resp:
        return resp.status, await resp.json()


SYSTEM = " ".join(f"rule{i}" for i in range(48))


async def test_http_answers_report_cached_tokens_and_vllm_metrics_per_replica() -> None:
    config = SimulatorConfig(
        serving=ServingConfig(replicas=2, decode_base_s=0.001, decode_per_seq_s=0.0)
    )
    async with LLMSimulator(config) as sim, aiohttp.ClientSession() as session:
        assert len(sim.base_urls) == 2 and sim.base_urls[0] != sim.base_urls[1]
        url0, url1 = sim.base_urls
        status, first = await _chat(session, url0, "Rewrite: rivers carry sediment to the sea.")
        assert status == 200
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        _, second = await _chat(session, url0, "Rewrite: glaciers carve valleys slowly.")
        assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 48
        _, elsewhere = await _chat(session, url1, "Rewrite: glaciers carve valleys slowly.")
        assert elsewhere["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # its own cache
        # vLLM rejects a priority unless the server schedules by priority.
        status, error = await _chat(session, url0, "x", priority=3)
        assert status == 400 and "priority" in error["error"]["message"]
        async with session.get(url0.removesuffix("/v1") + "/metrics") as resp:
            text = await resp.text()
    names = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
    )
    for name in names:
        assert name + "{" in text, name
    assert 'vllm:prefix_cache_hits_total{engine="0",model_name="sim-model"} 48' in text
    assert 'engine="1"' not in text  # each port reports its own replica
    assert sim.stats().cached_tokens == 48


async def test_gateway_queue_limit_answers_429() -> None:
    serving = ServingConfig(max_num_seqs=1, max_waiting=1, decode_base_s=0.01, decode_per_seq_s=0.0)
    async with LLMSimulator(SimulatorConfig(serving=serving)) as sim, aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(_chat(s, sim.base_url, f"doc {i}") for i in range(4)))
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) == 2 and statuses.count(429) == 2


def test_child_process_serves_every_replica_on_its_own_port() -> None:
    config = SimulatorConfig(serving=ServingConfig(replicas=3, decode_base_s=0.001))
    with SimulatorProcess(config) as sim:
        assert len(sim.base_urls) == 3 and len(set(sim.base_urls)) == 3
        assert sim.base_url == sim.base_urls[0]

        async def one_each() -> list[int]:
            async with aiohttp.ClientSession() as session:
                return [(await _chat(session, url, "hello there"))[0] for url in sim.base_urls]

        assert asyncio.run(one_each()) == [200, 200, 200]
        assert sim.stats().status_counts == {200: 3}
