"""/metrics, /healthz and /readyz over real HTTP on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from streamsynth.metrics.health import HealthState
from streamsynth.metrics.registry import Metrics
from streamsynth.metrics.server import MetricsServer, start_metrics_server


@pytest.fixture
async def served() -> AsyncIterator[tuple[MetricsServer, Metrics, HealthState]]:
    metrics, health = Metrics(), HealthState(heartbeat_timeout_s=5.0)
    server = await start_metrics_server(metrics, health, "127.0.0.1", 0)
    try:
        yield server, metrics, health
    finally:
        await server.stop()


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_port_zero_reads_back_the_bound_port(served: tuple[MetricsServer, ...]) -> None:
    server = served[0]
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


async def test_metrics_exposition(served: tuple[MetricsServer, Metrics, HealthState]) -> None:
    server, metrics, _ = served
    metrics.records_consumed.labels("docs").inc(3)
    metrics.llm_tokens.labels("qa", "m", "input").inc(42)
    status, ctype, body = await _get(server.url + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert 'streamsynth_records_consumed_total{topic="docs"} 3.0' in body
    assert 'streamsynth_llm_tokens_total{model="m",stage="qa",type="input"} 42.0' in body
    assert "streamsynth_build_info{" in body
    assert "process_resident_memory_bytes" in body


async def test_health_transitions(served: tuple[MetricsServer, Metrics, HealthState]) -> None:
    server, _, health = served
    # Fresh process: alive (the loop answers), not ready.
    assert (await _get(server.url + "/healthz"))[0] == 200
    status, _, text = await _get(server.url + "/readyz")
    assert status == 503
    assert "started" in text and "joined" in text and "LLM" in text

    health.mark_started()
    health.mark_joined()
    status, _, text = await _get(server.url + "/readyz")
    assert status == 503 and "LLM endpoint answered" in text and "started" not in text

    health.mark_llm_ok()
    assert await _get(server.url + "/readyz") == (200, "text/plain; charset=utf-8", "ok\n")

    # A consume loop that stopped beating: liveness fails, readiness is unaffected by it.
    health.last_heartbeat -= 10.0
    status, _, text = await _get(server.url + "/healthz")
    assert status == 503 and "heartbeat" in text
    health.heartbeat()
    assert (await _get(server.url + "/healthz"))[0] == 200

    # Losing the partitions, then shutting down, makes the worker unready again.
    health.mark_joined(False)
    assert (await _get(server.url + "/readyz"))[0] == 503
    health.mark_joined()
    health.mark_stopping()
    status, _, text = await _get(server.url + "/readyz")
    assert status == 503 and "not stopping" in text


async def test_unknown_path_is_404(served: tuple[MetricsServer, ...]) -> None:
    assert (await _get(served[0].url + "/nope"))[0] == 404


async def test_stop_releases_the_port() -> None:
    server = await start_metrics_server(Metrics(), HealthState(), "127.0.0.1", 0)
    port = server.port
    await server.stop()
    again = await start_metrics_server(Metrics(), HealthState(), "127.0.0.1", port)
    try:
        assert again.port == port
    finally:
        await again.stop()


async def test_readiness_follows_the_broker_the_llm_and_the_circuits_now(
    served: tuple[MetricsServer, Metrics, HealthState],
) -> None:
    from streamsynth.metrics.health import ReadinessObserver

    server, metrics, health = served
    health.mark_started()
    health.mark_joined()
    health.mark_llm_ok()
    assert (await _get(server.url + "/readyz"))[0] == 200

    health.set_broker_reachable(False)
    status, _, text = await _get(server.url + "/readyz")
    assert status == 503 and "broker" in text
    assert (await _get(server.url + "/healthz"))[0] == 200  # liveness is the loop only
    health.set_broker_reachable(True)
    assert (await _get(server.url + "/readyz"))[0] == 200

    health.set_llm_reachable(False)
    status, _, text = await _get(server.url + "/readyz")
    assert status == 503 and "no LLM endpoint answers" in text
    health.set_llm_reachable(True)
    assert (await _get(server.url + "/readyz"))[0] == 200

    observer = ReadinessObserver(metrics, health)
    observer.on_inflight(endpoint="http://a/v1", inflight=1)
    observer.on_inflight(endpoint="http://b/v1", inflight=1)
    observer.on_circuit(endpoint="http://a/v1", open=True)
    assert (await _get(server.url + "/readyz"))[0] == 200  # b still serves
    observer.on_circuit(endpoint="http://b/v1", open=True)
    status, _, text = await _get(server.url + "/readyz")
    assert status == 503 and "circuit is open" in text and "http://b/v1" in text
    observer.on_circuit(endpoint="http://a/v1", open=False)
    assert (await _get(server.url + "/readyz"))[0] == 200
    assert (
        'streamsynth_llm_circuit_open{endpoint="http://a/v1"} 0.0'
        in (await _get(server.url + "/metrics"))[2]
    )
