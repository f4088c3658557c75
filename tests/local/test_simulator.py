"""The LLM simulator: answers, markers, faults, latency, limits and stats over real HTTP."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsynth.local.llm_simulator import (
    FaultConfig,
    LatencyModel,
    LLMSimulator,
    SimulatorConfig,
    SimulatorProcess,
    build_parser,
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, sim: LLMSimulator, content: str, **fields: Any
) -> tuple[int, dict[str, str], Any]:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": content}], **fields}
    async with http.post(sim.base_url + "/chat/completions", json=body) as resp:
        raw = await resp.read()
        try:
            payload: Any = await resp.json(content_type=None)
        except ValueError:
            payload = raw
        return resp.status, dict(resp.headers), payload


def words(text: str) -> int:
    return len(text.split())


# -- answers ---------------------------------------------------------------------------


async def test_plain_answer_is_deterministic_with_exact_usage(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    prompt = "Paraphrase this passage about rivers, deltas and the sediment they carry."
    status, _, first = await post(http, llm_sim, prompt)
    _, _, second = await post(http, llm_sim, prompt)
    assert status == 200
    text = first["choices"][0]["message"]["content"]
    assert text == second["choices"][0]["message"]["content"]
    assert first["model"] == "sim-model"
    assert first["choices"][0]["finish_reason"] == "stop"
    assert 40 <= words(text) <= 80  # about max(60, prompt words)
    assert first["usage"] == {
        "prompt_tokens": words(prompt),
        "completion_tokens": words(text),
        "total_tokens": words(prompt) + words(text),
    }
    # Built from the prompt's own words.
    vocabulary = set(re.findall(r"[a-z]+", prompt.lower()))
    assert set(re.findall(r"[a-z]+", text.lower())) <= vocabulary


async def test_answer_shapes_follow_the_prompt(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    _, _, qa = await post(http, llm_sim, "Write Question: and answer pairs about cats and dogs.")
    lines = qa["choices"][0]["message"]["content"].split("\n")
    assert 2 <= len(lines) <= 6
    assert all(ln.startswith("- Question: ") and "? Answer: " in ln for ln in lines)

    _, _, facts = await post(http, llm_sim, "Extract a bulleted list of facts from cats and dogs.")
    fact_lines = facts["choices"][0]["message"]["content"].split("\n")
    assert len(fact_lines) >= 2 and all(ln.startswith("- ") for ln in fact_lines)

    _, _, pref = await post(http, llm_sim, 'Start your answer with "Here is the text:" then cats.')
    assert pref["choices"][0]["message"]["content"].startswith("Here is the text: ")


async def test_long_prompt_gives_long_answer_and_max_tokens_truncates(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    prompt = " ".join(f"word{i % 50}" for i in range(300))
    _, _, full = await post(http, llm_sim, prompt)
    assert 240 <= full["usage"]["completion_tokens"] <= 360
    _, _, cut = await post(http, llm_sim, prompt, max_tokens=7)
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "length"
    assert words(choice["message"]["content"]) == 7
    assert cut["usage"]["completion_tokens"] == 7


async def test_n_choices_sum_usage(llm_sim: LLMSimulator, http: aiohttp.ClientSession) -> None:
    _, _, payload = await post(http, llm_sim, "Summarize the history of bridges.", n=3)
    choices = payload["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert payload["usage"]["completion_tokens"] == sum(
        words(c["message"]["content"]) for c in choices
    )


async def test_models_health_bad_requests(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    root = llm_sim.base_url.removesuffix("/v1")
    async with http.get(llm_sim.base_url + "/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["sim-model"]
    async with http.get(root + "/health") as resp:
        assert resp.status == 200
    async with http.post(llm_sim.base_url + "/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert "message" in (await resp.json())["error"]
    status, _, payload = await post(http, llm_sim, "hi", model="other")
    assert status == 404 and payload["error"]["code"] == "model_not_found"


# -- markers ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 429, 500, 503])
async def test_status_markers(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession, code: int
) -> None:
    for _ in range(2):  # every attempt gets the fault
        status, headers, payload = await post(http, llm_sim, f"text [[sim:{code}]]")
        assert status == code
        assert set(payload["error"]) == {"message", "type", "code"}
    if code == 429:
        assert headers["Retry-After"] == "1"  # FaultConfig.retry_after_s default
    assert llm_sim.stats().status_counts == {code: 2}


async def test_429_marker_with_retry_after(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    status, headers, _ = await post(http, llm_sim, "text [[sim:429:2]]")
    assert status == 429 and headers["Retry-After"] == "2"


async def test_fail_first_marker_counts_per_body(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    results = [(await post(http, llm_sim, "a [[sim:fail_first=2:429]]"))[0] for _ in range(4)]
    assert results == [429, 429, 200, 200]
    # A different body has its own counter.
    assert (await post(http, llm_sim, "b [[sim:fail_first=1:503]]"))[0] == 503
    assert (await post(http, llm_sim, "b [[sim:fail_first=1:503]]"))[0] == 200


async def test_reply_finish_latency_markers(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    _, _, payload = await post(http, llm_sim, "x [[sim:reply=line one\\nline two]]")
    assert payload["choices"][0]["message"]["content"] == "line one\nline two"
    assert payload["usage"]["completion_tokens"] == 4
    _, _, payload = await post(http, llm_sim, "x [[sim:finish=length]]")
    assert payload["choices"][0]["finish_reason"] == "length"
    start = time.perf_counter()
    await post(http, llm_sim, "x [[sim:latency=0.3]]")
    assert 0.3 <= time.perf_counter() - start < 1.5


async def test_malformed_empty_and_hang_markers(http: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(faults=FaultConfig(hang_s=0.3))
    async with LLMSimulator(config) as sim:
        bodies = [(await post(http, sim, f"m{i} [[sim:malformed]]"))[2] for i in range(8)]
        assert all(isinstance(b, bytes) or "choices" not in b for b in bodies)
        status, _, payload = await post(http, sim, "x [[sim:empty]]")
        assert status == 200 and payload["choices"] == []
        start = time.perf_counter()
        status, _, _ = await post(http, sim, "x [[sim:hang]]")
        assert status == 200 and time.perf_counter() - start >= 0.3


# -- probabilistic faults --------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (FaultConfig(rate_429=1.0, retry_after_s=None), 429),
        (FaultConfig(rate_500=1.0), 500),
        (FaultConfig(rate_503=1.0), 503),
    ],
)
async def test_fault_rates_of_one(
    http: aiohttp.ClientSession, faults: FaultConfig, expected: int
) -> None:
    async with LLMSimulator(SimulatorConfig(faults=faults)) as sim:
        for i in range(5):
            status, headers, _ = await post(http, sim, f"doc {i}")
            assert status == expected
            assert "Retry-After" not in headers
        assert sim.stats().status_counts == {expected: 5}


async def test_fault_rates_are_seeded_fractions(http: aiohttp.ClientSession) -> None:
    async def run() -> list[int]:
        config = SimulatorConfig(faults=FaultConfig(rate_500=0.3), seed=7)
        async with LLMSimulator(config) as sim:
            return [(await post(http, sim, f"doc {i}"))[0] for i in range(200)]

    first, second = await run(), await run()
    assert first == second  # same seed, same faults
    assert 30 <= first.count(500) <= 90


async def test_malformed_empty_hang_rates(http: aiohttp.ClientSession) -> None:
    faults = FaultConfig(rate_malformed=1.0)
    async with LLMSimulator(SimulatorConfig(faults=faults)) as sim:
        _, _, body = await post(http, sim, "doc")
        assert isinstance(body, bytes) or "choices" not in body
        assert sim.stats().completion_tokens == 0
    async with LLMSimulator(SimulatorConfig(faults=FaultConfig(rate_empty_choices=1.0))) as sim:
        assert (await post(http, sim, "doc"))[2]["choices"] == []
    async with LLMSimulator(SimulatorConfig(faults=FaultConfig(rate_hang=1.0, hang_s=0.2))) as sim:
        start = time.perf_counter()
        assert (await post(http, sim, "doc"))[0] == 200
        assert time.perf_counter() - start >= 0.2


# -- latency ---------------------------------------------------------------------------


async def test_fixed_latency_and_max_inflight(http: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(latency=LatencyModel(kind="fixed", fixed_s=0.2))
    async with LLMSimulator(config) as sim:
        start = time.perf_counter()
        results = await asyncio.gather(*(post(http, sim, f"doc {i}") for i in range(20)))
        elapsed = time.perf_counter() - start
        assert all(r[0] == 200 for r in results)
        assert 0.2 <= elapsed < 1.0  # concurrent, not serialized
        stats = sim.stats()
        assert stats.max_inflight == 20 and stats.inflight == 0
        assert stats.requests == 20


def test_latency_model_distributions() -> None:
    import random

    rng = random.Random(1)
    uniform = LatencyModel(kind="uniform", low_s=0.1, high_s=0.3)
    draws = [uniform.base_s(rng) for _ in range(2000)]
    assert min(draws) >= 0.1 and max(draws) <= 0.3
    assert statistics.mean(draws) == pytest.approx(0.2, abs=0.01)

    lognormal = LatencyModel(kind="lognormal", median_s=0.5, p99_s=5.0)
    draws = sorted(lognormal.base_s(rng) for _ in range(20000))
    assert statistics.median(draws) == pytest.approx(0.5, rel=0.1)
    assert draws[int(0.99 * len(draws))] == pytest.approx(5.0, rel=0.25)


async def test_token_rate_adds_generation_time(http: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(latency=LatencyModel(token_rate=100.0))
    async with LLMSimulator(config) as sim:
        start = time.perf_counter()
        _, _, payload = await post(http, sim, "x [[sim:reply=" + "w " * 30 + "]]")
        expected = payload["usage"]["completion_tokens"] / 100.0  # 30 tokens -> 0.3 s
        assert expected == pytest.approx(0.3)
        assert expected <= time.perf_counter() - start < expected + 1.0


# -- stats and limits ------------------------------------------------------------------


async def test_stats_usage_totals_and_reset(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    payloads = [(await post(http, llm_sim, f"document number {i}"))[2] for i in range(5)]
    await post(http, llm_sim, "x [[sim:500]]")
    root = llm_sim.base_url.removesuffix("/v1")
    async with http.get(root + "/stats") as resp:
        stats = await resp.json()
    assert stats["requests"] == 6
    assert stats["status_counts"] == {"200": 5, "500": 1}
    assert stats["prompt_tokens"] == sum(p["usage"]["prompt_tokens"] for p in payloads)
    assert stats["completion_tokens"] == sum(p["usage"]["completion_tokens"] for p in payloads)
    assert len(llm_sim.last_requests) == 6
    assert llm_sim.last_requests[0]["messages"][0]["content"] == "document number 0"
    async with http.post(root + "/stats/reset") as resp:
        assert resp.status == 200
    assert llm_sim.stats().requests == 0 and llm_sim.stats().status_counts == {}


async def test_rpm_limit_sends_429_and_ratelimit_headers(http: aiohttp.ClientSession) -> None:
    async with LLMSimulator(SimulatorConfig(rpm_limit=3)) as sim:
        results = [await post(http, sim, f"doc {i}") for i in range(4)]
    assert [r[0] for r in results] == [200, 200, 200, 429]
    assert results[0][1]["x-ratelimit-limit-requests"] == "3"
    assert [r[1]["x-ratelimit-remaining-requests"] for r in results[:3]] == ["2", "1", "0"]
    assert 0 < float(results[3][1]["Retry-After"]) <= 60


async def test_tpm_limit(http: aiohttp.ClientSession) -> None:
    async with LLMSimulator(SimulatorConfig(tpm_limit=100)) as sim:
        first = await post(http, sim, "one two three four five", max_tokens=50)
        second = await post(http, sim, "one two three four five six", max_tokens=50)
        third = await post(http, sim, "one two three four five six seven", max_tokens=50)
    assert first[0] == 200 and first[1]["x-ratelimit-limit-tokens"] == "100"
    assert second[0] == 200  # 55 tokens used, 45 left >= 6 prompt tokens
    assert third[0] == 429 and "x-ratelimit-reset-tokens" in third[1]


# -- process and CLI -------------------------------------------------------------------


def test_simulator_process_round_trip() -> None:
    import urllib.request

    import orjson

    with SimulatorProcess(SimulatorConfig(models=["m1"])) as proc:
        body = {"model": "m1", "messages": [{"role": "user", "content": "hello there world"}]}
        req = urllib.request.Request(
            proc.base_url + "/chat/completions",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            payload = orjson.loads(resp.read())
        assert payload["usage"]["prompt_tokens"] == 3
        stats = proc.stats()
        assert stats.requests == 1 and stats.status_counts == {200: 1}
        assert stats.completion_tokens == payload["usage"]["completion_tokens"]
        proc.reset_stats()
        assert proc.stats().requests == 0


def test_cli_parser_and_latency_spec() -> None:
    args = build_parser().parse_args(["--latency", "uniform:0.1:0.2", "--rate-429", "0.5"])
    assert args.rate_429 == 0.5
    assert LatencyModel.parse(args.latency) == LatencyModel(kind="uniform", low_s=0.1, high_s=0.2)
    assert LatencyModel.parse("lognormal:0.5:5").p99_s == 5.0
    with pytest.raises(ValueError):
        LatencyModel.parse("gamma:1")


async def test_client_giving_up_cancels_the_handler(
    llm_sim: LLMSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "[[sim:latency=5]]"}]}
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            llm_sim.base_url + "/chat/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    await llm_sim.wait_idle(timeout_s=3.0)
    assert llm_sim.stats().status_counts == {499: 1}
    assert llm_sim.stats().inflight == 0


def test_simulator_process_exits_when_its_parent_goes_away() -> None:
    proc = SimulatorProcess()
    proc.start()
    child = proc._proc
    assert child is not None and child.stdin is not None
    child.stdin.close()  # what the OS does when the parent dies
    assert child.wait(timeout=10) == 0
    proc.stop()
