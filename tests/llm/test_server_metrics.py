"""Reading the server's own queue from its /metrics: parsing, the scraper against real
loopback servers (one exporting the gauges, ones that do not, the serving simulator),
and the ``llm.server_metrics`` settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from streamsynth.config import ConfigError, LLMSettings, settings_from_dict
from streamsynth.llm.factory import build_endpoint
from streamsynth.llm.observer import NULL_OBSERVER
from streamsynth.llm.server_metrics import (
    ServerMetricsScraper,
    default_metrics_url,
    parse_gauges,
)
from streamsynth.llm.types import ChatRequest, GenerationConfig
from streamsynth.local.broker import free_port
from streamsynth.local.llm_simulator import LLMSimulator, ServingConfig, SimulatorConfig

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 200.0
vllm:num_requests_running{engine="1",model_name="m"} 56.0 1733000000000
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m {odd}"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} NaN
vllm:num_requests_swapped{engine="0",model_name="m"} 9.0
vllm:num_requests_running_total 1e9
vllm:generation_tokens_total{engine="0"} 123456.0
"""


def test_parses_the_two_gauges_summed_over_label_sets() -> None:
    assert parse_gauges(VLLM_TEXT) == (256.0, 3.0)  # NaN, other families, timestamps: left
    assert parse_gauges("vllm:num_requests_running 4\nvllm:num_requests_waiting 0\n") == (4, 0)


def test_without_both_gauges_there_is_no_reading() -> None:
    assert parse_gauges("") is None
    assert parse_gauges('vllm:num_requests_running{a="b"} 3\n') is None
    assert parse_gauges("# TYPE process_cpu_seconds_total counter\nprocess_cpu 1.5\n") is None
    assert (
        parse_gauges('vllm:num_requests_waiting{x="y"} oops\nvllm:num_requests_running 1') is None
    )


def test_metrics_url_is_the_base_url_without_v1() -> None:
    assert default_metrics_url("http://h:8000/v1") == "http://h:8000/metrics"
    assert default_metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert default_metrics_url("https://h/serve") == "https://h/serve/metrics"


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def _serve(routes: dict[str, Callable[[web.Request], Any]]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def gauges_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Serves VLLM_TEXT with a waiting count that rises by one per read."""
    reads: list[int] = []

    async def metrics(request: web.Request) -> web.Response:
        reads.append(len(reads))
        text = VLLM_TEXT.replace('"m {odd}"} 3.0', f'"m"}} {len(reads)}')
        return web.Response(text=text, content_type="text/plain")

    async with _serve({"/metrics": metrics}) as root:
        yield root, reads


async def test_scraper_hands_each_read_to_the_limiter(gauges_server: tuple[str, list[int]]) -> None:
    root, _ = gauges_server
    seen: list[tuple[float, float]] = []
    scraper = ServerMetricsScraper(
        "ep", root + "/metrics", lambda r, w: seen.append((r, w)), interval_s=0.05
    )
    scraper.ensure_started()
    try:
        await _until(lambda: len(seen) >= 3, "three reads")
    finally:
        await scraper.aclose()
    assert scraper.state == "live"
    assert seen[:3] == [(256.0, 1.0), (256.0, 2.0), (256.0, 3.0)]
    after = len(seen)
    await asyncio.sleep(0)  # closed: the task is gone, nothing more arrives
    assert len(seen) == after


async def _not_found(request: web.Request) -> web.Response:
    return web.Response(status=404)


async def _no_gauges(request: web.Request) -> web.Response:
    return web.Response(text="# a /metrics without vLLM's gauges\nup 1\n")


@pytest.mark.parametrize("handler", [_not_found, _no_gauges], ids=["404", "no-gauges"])
async def test_an_answer_without_the_gauges_falls_back_to_latency_once(
    handler: Callable[[web.Request], Any], caplog: pytest.LogCaptureFixture
) -> None:
    async with _serve({"/metrics": handler}) as root:
        seen: list[tuple[float, float]] = []
        scraper = ServerMetricsScraper(
            "ep", root + "/metrics", lambda r, w: seen.append((r, w)), interval_s=0.01
        )
        with caplog.at_level(logging.INFO, logger="streamsynth.llm.server_metrics"):
            scraper.ensure_started()
            try:
                await _until(lambda: scraper.state == "absent", "fallback")
                task = scraper._task
                assert task is not None
                await _until(task.done, "the scraper to stop asking")
            finally:
                await scraper.aclose()
    assert seen == [] and scraper.reads == 0
    assert [r.message for r in caplog.records].count(
        "no vllm gauges at the server's metrics URL: adaptive limit by latency"
    ) == 1


async def test_a_server_that_never_answers_is_given_up() -> None:
    port = free_port()  # nothing listens there
    scraper = ServerMetricsScraper(
        "ep", f"http://127.0.0.1:{port}/metrics", lambda r, w: None, interval_s=0.01,
        give_up_after=3,
    )  # fmt: skip
    scraper.ensure_started()
    try:
        await _until(lambda: scraper.state == "absent", "giving up")
    finally:
        await scraper.aclose()


def _settings(url: str, **llm: Any) -> LLMSettings:
    return LLMSettings.model_validate(
        {"base_url": url, "model": "m", "cache": {"kind": "none"}, **llm}
    )


def _request() -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=({"role": "user", "content": "Say something."},),
        config=GenerationConfig(max_tokens=4),
    )


async def _one_attempt(settings: LLMSettings) -> Any:
    """An endpoint built as the worker builds it, after one answered attempt."""
    ep = build_endpoint(settings, settings.base_urls[0], "EMPTY", NULL_OBSERVER)
    async with ep.attempt(_request(), deadline=time.monotonic() + 30) as attempt:
        await attempt.send(_request())
    return ep


@pytest.mark.parametrize("serving", [True, False], ids=["serving", "plain"])
async def test_the_simulator_is_read_in_serving_mode_and_not_otherwise(serving: bool) -> None:
    # The plain simulator answers /metrics empty (no gauges): latency alone.
    config = SimulatorConfig(models=["m"], serving=ServingConfig(replicas=1) if serving else None)
    sim = LLMSimulator(config)
    await sim.start()
    try:
        ep = await _one_attempt(_settings(sim.base_url))
        try:
            scraper = ep.scraper
            assert scraper is not None
            if serving:
                await _until(lambda: scraper.reads >= 2, "two reads of the gauges")
                assert ep.limiter.server_signal
            else:
                await _until(lambda: scraper.state == "absent", "fallback")
                assert not ep.limiter.server_signal
        finally:
            await ep.aclose()
    finally:
        await sim.stop()


async def test_a_configured_metrics_url_is_the_one_read(
    gauges_server: tuple[str, list[int]],
) -> None:
    root, reads = gauges_server
    # The base URL has no /metrics at all (nothing listens): only the override can work.
    base = f"http://127.0.0.1:{free_port()}/v1"
    settings = _settings(base, server_metrics_urls={base + "/": root + "/metrics"})
    ep = build_endpoint(settings, base, "EMPTY", NULL_OBSERVER)
    assert ep.scraper is not None and ep.scraper.url == root + "/metrics"
    ep.scraper.ensure_started()
    try:
        await _until(lambda: ep.limiter.server_signal, "the limiter to get the gauges")
    finally:
        await ep.aclose()
    assert reads


def test_off_or_a_fixed_limit_reads_nothing() -> None:
    url = "http://127.0.0.1:1/v1"
    for llm in ({"server_metrics": "off"}, {"adaptive_concurrency": False}):
        ep = build_endpoint(_settings(url, **llm), url, "EMPTY", NULL_OBSERVER)
        assert ep.scraper is None
    assert _settings(url).server_metrics == "auto"  # the default


def _config(**llm: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "input_topic": "in", "dlq_topic": "dlq"},
        "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m", **llm},
        "stages": [{"task": "custom", "name": "s", "prompt": "{document}", "output_field": "o",
                    "output_topic": "out"}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("llm", "field"),
    [
        ({"server_metrics": "on"}, "llm.server_metrics"),
        (
            {"server_metrics_urls": {"http://elsewhere/v1": "http://x/metrics"}},
            "server_metrics_urls",
        ),
        ({"server_metrics_urls": {"http://127.0.0.1:1/v1": "x/metrics"}}, "server_metrics_urls"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_field(llm: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(_config(**llm))
    assert field in str(info.value), str(info.value)
