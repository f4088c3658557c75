"""Readiness on an idle topic: the LLM probe, not the first record, makes a worker ready."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka_helpers import Topics, WorkerProcess, custom_stage, worker_config

from streamsynth.local.broker import free_port


def _metrics_port(worker: WorkerProcess, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in worker.log_text().splitlines():
            if line.startswith("{") and "metrics server listening" in line:
                return int(json.loads(line)["port"])
        assert worker.alive(), worker.log_text()
        time.sleep(0.1)
    raise AssertionError("the worker never logged its metrics port")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_status(port: int, path: str, status: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        code, body = _get(port, path)
        if code == status:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{path} never returned {status}; last body: {body}")


@pytest.mark.parametrize("llm_up", [True, False], ids=["llm-up", "llm-down"])
def test_idle_worker_readiness_follows_the_llm_probe(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path, llm_up: bool
) -> None:
    topics = Topics.make(["summary"])
    asyncio.run(topics.create(kafka_bootstrap, partitions=2))
    url = sim_url if llm_up else f"http://127.0.0.1:{free_port()}/v1"
    cfg = worker_config(
        kafka_bootstrap, topics, url, [custom_stage("summary", topics.outputs["summary"])]
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        port = _metrics_port(worker)
        # Liveness never depends on the LLM: a slow or absent model must not restart pods.
        _wait_status(port, "/healthz", 200, 20)
        if llm_up:
            _wait_status(port, "/readyz", 200, 30)  # no record was ever produced
        else:
            body = _wait_status(port, "/readyz", 503, 10)
            assert "LLM endpoint answered" in body
            time.sleep(1.0)
            assert _get(port, "/readyz")[0] == 503
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_text()[-2000:]


def test_readiness_follows_the_llm_going_down_and_coming_back(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """/readyz: 503 within 15 s of the LLM going away, 200 within 15 s of its return."""
    from streamsynth.local.llm_simulator import SimulatorConfig, SimulatorProcess

    topics = Topics.make(["summary"])
    asyncio.run(topics.create(kafka_bootstrap, partitions=2))
    sim = SimulatorProcess(SimulatorConfig(port=free_port()))
    url = sim.start()
    cfg = worker_config(
        kafka_bootstrap, topics, url, [custom_stage("summary", topics.outputs["summary"])]
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        port = _metrics_port(worker)
        _wait_status(port, "/readyz", 200, 30)
        sim.stop()
        t0 = time.monotonic()
        body = _wait_status(port, "/readyz", 503, 15)
        print(f"unready {time.monotonic() - t0:.1f} s after the LLM went down")
        assert "no LLM endpoint answers" in body
        assert _get(port, "/healthz")[0] == 200  # liveness is about the event loop only
        assert sim.start() == url  # the same port again
        t0 = time.monotonic()
        _wait_status(port, "/readyz", 200, 15)
        print(f"ready {time.monotonic() - t0:.1f} s after the LLM came back")
    finally:
        worker.stop()
        sim.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_text()[-2000:]


def test_readiness_is_503_while_every_endpoint_circuit_is_open(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A server that answers /models but fails every chat: the breaker opens, /readyz says
    so; the same port serving again closes it on the next probe request."""
    from streamsynth.local.llm_simulator import FaultConfig, SimulatorConfig, SimulatorProcess
    from streamsynth.testing.harness import doc, produce

    topics = Topics.make(["summary"])
    asyncio.run(topics.create(kafka_bootstrap, partitions=1))
    port = free_port()
    failing = SimulatorProcess(SimulatorConfig(port=port, faults=FaultConfig(rate_500=1.0)))
    url = failing.start()
    cfg = worker_config(
        kafka_bootstrap,
        topics,
        url,
        [custom_stage("summary", topics.outputs["summary"])],
        llm__breaker_failures=3,
        llm__breaker_reset_s=1,
        llm__max_attempts=1000,
        llm__deadline_s=120,
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    healthy = SimulatorProcess(SimulatorConfig(port=port))
    try:
        mport = _metrics_port(worker)
        _wait_status(mport, "/readyz", 200, 30)  # /models answers: reachable
        asyncio.run(produce(kafka_bootstrap, topics.input, [doc(i) for i in range(5)]))
        body = _wait_status(mport, "/readyz", 503, 15)
        assert "circuit is open" in body, body
        assert _get(mport, "/healthz")[0] == 200
        failing.stop()
        assert healthy.start() == url
        # The records are still retrying: a half-open probe succeeds and closes the circuit.
        _wait_status(mport, "/readyz", 200, 15)
    finally:
        worker.stop()
        failing.stop()
        healthy.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_text()[-2000:]
