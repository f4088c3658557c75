"""End to end against a real Prometheus: a worker (its own process) on the embedded broker
and the LLM simulator processes a workload that touches every panel, Prometheus scrapes it
every second, and every dashboard and alert expression is evaluated through the HTTP API.

One scenario runs once per module; the tests below each check one aspect of it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_helpers import ALERTS, alert_exprs, load_dashboard, panel_exprs, substitute

from streamsynth.local.broker import EmbeddedBroker, create_topics, free_port
from streamsynth.local.llm_simulator import ServingConfig, SimulatorConfig, SimulatorProcess
from streamsynth.testing.harness import WorkerProcess, produce

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
]

FAKE_API_KEY = "sk-e2e-FAKEKEY-7d41c0ffee93b2a8"
FAKE_SASL_PASSWORD = "sasl-pw-Zq8!vT3#e2e"
MODEL = "sim-model"
INPUT = "docs"
DLQ = "docs.dlq"
STAGES = {"summary": "synth.summary", "questions": "synth.questions"}

GOOD_DOCS = 30
RETRIED_DOCS = 3  # the first attempt of each request gets a 429, the retry succeeds
FAILING_DOCS = 2  # every attempt gets a 429: the stages give up, the record is dead-lettered
BAD_RECORDS = [
    b"{not json",
    b"\xff\xfe binary",
    json.dumps({"id": "x", "body": "no text"}).encode(),
]
CONSUMED = GOOD_DOCS + RETRIED_DOCS + FAILING_DOCS + len(BAD_RECORDS)
PRODUCED = (GOOD_DOCS + RETRIED_DOCS) * len(STAGES)
DEAD_LETTERED = FAILING_DOCS * len(STAGES) + len(BAD_RECORDS)


def _wait(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def _http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _doc(i: int, marker: str = "") -> bytes:
    words = " ".join(f"w{i}x{j}" for j in range(25))  # unique per doc: no cache hits
    return json.dumps({"id": f"doc-{i}", "text": f"Document {i}. {marker} {words}"}).encode()


def _workload() -> list[bytes]:
    docs = [_doc(i) for i in range(GOOD_DOCS)]
    docs += [_doc(100 + i, "[[sim:fail_first=1:429]]") for i in range(RETRIED_DOCS)]
    docs += [_doc(200 + i, "[[sim:429:0]]") for i in range(FAILING_DOCS)]
    return docs + BAD_RECORDS


async def _produce(bootstrap: str, values: list[bytes]) -> None:
    await create_topics(bootstrap, {INPUT: 2, DLQ: 1, **dict.fromkeys(STAGES.values(), 1)})
    await produce(bootstrap, INPUT, [(str(i).encode(), v) for i, v in enumerate(values)])


def _worker_config(bootstrap: str, llm_url: str, metrics_port: int) -> dict[str, Any]:
    def stage(name: str, instruction: str) -> dict[str, Any]:
        return {
            "task": "custom",
            "name": name,
            "prompt": instruction + "\n\n{document}",
            "output_field": name,
            "output_topic": STAGES[name],
            # temperature 0 makes requests cacheable, so cache lookups (all misses) are counted.
            "generation": {"temperature": 0.0, "max_tokens": 48},
        }

    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": "metrics-e2e",
            "input_topic": INPUT,
            "dlq_topic": DLQ,
            # Unused on PLAINTEXT, but registered as a secret by the worker all the same.
            "sasl_password": FAKE_SASL_PASSWORD,
        },
        "llm": {
            "base_url": llm_url,
            "api_key": FAKE_API_KEY,
            "model": MODEL,
            "max_attempts": 3,
            "backoff_base_s": 0.02,
            "backoff_max_s": 0.1,
            "timeout_s": 10,
            "breaker_failures": 1000,
            "cache": {"kind": "memory"},
            "prices": {MODEL: {"input_per_million": 1.5, "output_per_million": 4.0}},
        },
        "stages": [
            stage("summary", "Summarize the following text."),
            stage("questions", "Write questions about the following text."),
        ],
        "worker": {"commit_interval_s": 0.2, "max_batch_wait_ms": 20},
        "metrics": {"host": "127.0.0.1", "port": metrics_port, "summary_interval_s": 0},
        "logging": {"level": "DEBUG", "format": "json"},
    }


def _prometheus_config(metrics_port: int, llm_target: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "streamsynth",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            },
            # The simulator in serving mode exports vLLM's metrics: the servers' panels.
            {"job_name": "vllm", "static_configs": [{"targets": [llm_target]}]},
        ],
    }


@dataclass
class Scenario:
    tmp: Path
    metrics_url: str = ""
    prom_url: str = ""
    sim_stats: Any = None
    worker_log: str = ""
    worker_rc: int | None = None
    healthz: tuple[int, str] = (0, "")
    readyz: tuple[int, str] = (0, "")
    metrics_text: str = ""
    rules: list[dict[str, Any]] = field(default_factory=list)
    #: Queries evaluate at this time, taken while the worker ran: after it stops, its
    #: series go stale, and a query "now" would see none of them.
    at: float = 0.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def query(self, expr: str) -> dict[str, Any]:
        params = {"query": expr}
        if self.at:
            params["time"] = f"{self.at:.3f}"
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode(params)
        status, body = _http_get(url)
        assert body, f"no answer from Prometheus for {expr}"
        result: dict[str, Any] = json.loads(body)
        result["http_status"] = status
        return result

    def scalar(self, expr: str) -> float | None:
        data = self.query(expr)["data"]["result"]
        return float(data[0]["value"][1]) if data else None


def _sample_sum(metrics_text: str, name: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_prometheus(sc: Scenario, bindir: Path, metrics_port: int, llm_url: str) -> None:
    config = sc.tmp / "prometheus.yml"
    llm_target = llm_url.removeprefix("http://").removesuffix("/v1")
    config.write_text(yaml.safe_dump(_prometheus_config(metrics_port, llm_target)))
    port = free_port()
    log = (sc.tmp / "prometheus.log").open("wb")
    sc.procs.append(
        subprocess.Popen(
            [str(bindir / "prometheus"), f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={sc.tmp / 'tsdb'}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    )  # fmt: skip
    sc.prom_url = f"http://127.0.0.1:{port}"
    _wait("Prometheus ready", lambda: _http_get(sc.prom_url + "/-/ready")[0] == 200, 30)


def _start_worker(sc: Scenario, bootstrap: str, llm_url: str, metrics_port: int) -> None:
    # As production starts it (``streamsynth run``); config and worker.log in sc.tmp.
    worker = WorkerProcess(_worker_config(bootstrap, llm_url, metrics_port), sc.tmp).start()
    assert worker.proc is not None
    sc.procs.append(worker.proc)
    sc.metrics_url = f"http://127.0.0.1:{metrics_port}"


def _all_done(sc: Scenario) -> bool:
    status, text = _http_get(sc.metrics_url + "/metrics")
    if status != 200:
        return False
    return (
        _sample_sum(text, "streamsynth_records_consumed_total") == CONSUMED
        and _sample_sum(text, "streamsynth_records_produced_total") == PRODUCED
        and _sample_sum(text, "streamsynth_records_dlq_total") == DEAD_LETTERED
    )


def _prometheus_caught_up(sc: Scenario) -> bool:
    # The final counts are scraped, and there are enough samples for rate() over 15s.
    return (
        sc.scalar("sum(streamsynth_records_produced_total)") == PRODUCED
        and sc.scalar("sum(streamsynth_records_dlq_total)") == DEAD_LETTERED
        and (sc.scalar('count_over_time(up{job="streamsynth"}[15s])') or 0) >= 4
    )


def _rules(sc: Scenario) -> list[dict[str, Any]]:
    _, body = _http_get(sc.prom_url + "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"] if body else []
    return [r for g in groups for r in g["rules"]]


def _rules_evaluated(sc: Scenario) -> bool:
    rules = _rules(sc)
    # An unevaluated rule reports the zero time, year 0001.
    return len(rules) == len(alert_exprs()) and all(
        not r.get("lastEvaluation", "0001").startswith("0001") for r in rules
    )


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    return proc.returncode


@pytest.fixture(scope="module")
def scenario(prometheus_bin: Path) -> Iterator[Scenario]:
    with tempfile.TemporaryDirectory(prefix="metrics-e2e-") as tmp:
        sc = Scenario(Path(tmp))
        broker = EmbeddedBroker()
        # Serving mode (fast steps), so that the servers' panels have series too.
        serving = ServingConfig(decode_base_s=0.0002, decode_per_seq_s=0.0)
        sim = SimulatorProcess(SimulatorConfig(models=[MODEL], serving=serving))
        try:
            bootstrap = broker.start()
            llm_url = sim.start()
            asyncio.run(_produce(bootstrap, _workload()))
            metrics_port = free_port()
            _start_prometheus(sc, prometheus_bin, metrics_port, llm_url)
            _start_worker(sc, bootstrap, llm_url, metrics_port)
            _wait("the worker to finish the workload", lambda: _all_done(sc), 60)
            _wait("Prometheus to scrape the final values", lambda: _prometheus_caught_up(sc), 30)
            _wait("every alert rule to be evaluated", lambda: _rules_evaluated(sc), 15)
            sc.at = time.time()
            sc.rules = _rules(sc)
            sc.healthz = _http_get(sc.metrics_url + "/healthz")
            sc.readyz = _http_get(sc.metrics_url + "/readyz")
            sc.metrics_text = _http_get(sc.metrics_url + "/metrics")[1]
            sc.sim_stats = sim.stats()
            # A graceful stop (SIGTERM: drain, commit, leave) ends the worker's log.
            worker = sc.procs.pop()
            sc.worker_rc = _stop(worker)
            sc.worker_log = (sc.tmp / "worker.log").read_text(errors="replace")
            yield sc
        finally:
            for proc in sc.procs:
                _stop(proc)
            sim.stop()
            broker.stop()
            for name in ("worker.log", "prometheus.log"):
                if not sc.worker_log and (sc.tmp / name).exists():
                    # Shown by pytest when set-up failed: the tail says why.
                    print(f"--- {name} ---", (sc.tmp / name).read_text(errors="replace")[-4000:])


def test_every_panel_expression_returns_series(scenario: Scenario) -> None:
    problems = []
    for where, raw in panel_exprs(load_dashboard()):
        answer = scenario.query(substitute(raw))
        if answer.get("status") != "success":
            problems.append(f"{where}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            problems.append(f"{where}: no series for {substitute(raw)}")
    assert not problems, "\n".join(problems)


def test_every_alert_expression_evaluates(scenario: Scenario) -> None:
    for name, expr in alert_exprs():
        answer = scenario.query(expr)
        assert answer["status"] == "success", f"{name}: {answer.get('error')}"
    rules = scenario.rules
    assert {r["name"] for r in rules} == {name for name, _ in alert_exprs()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_healthy_worker_alerts_stay_quiet(scenario: Scenario) -> None:
    # The workload finished and the worker is up: none of these may fire.
    firing = scenario.query('ALERTS{alertstate="firing"}')["data"]["result"]
    quiet = {"StreamsynthWorkerDown", "StreamsynthAllWorkersAbsent", "StreamsynthCircuitOpen",
             "StreamsynthNoProgress", "StreamsynthLagGrowing"}  # fmt: skip
    assert not [a["metric"]["alertname"] for a in firing if a["metric"]["alertname"] in quiet]
    assert scenario.scalar('up{job="streamsynth"}') == 1


def test_token_counters_match_the_simulator_exactly(scenario: Scenario) -> None:
    stats = scenario.sim_stats
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0
    assert scenario.scalar('sum(streamsynth_llm_tokens_total{type="input"})') == (
        stats.prompt_tokens
    )
    assert scenario.scalar('sum(streamsynth_llm_tokens_total{type="output"})') == (
        stats.completion_tokens
    )
    # The OTel histogram agrees with the plain counters.
    assert scenario.scalar(
        'sum(gen_ai_client_token_usage_sum{gen_ai_token_type="input"})'
    ) == float(stats.prompt_tokens)
    assert scenario.scalar("sum(streamsynth_llm_cache_hits_total)") is None  # none occurred


def test_workload_shape_in_prometheus(scenario: Scenario) -> None:
    assert scenario.scalar("sum(streamsynth_records_consumed_total)") == CONSUMED
    assert (
        scenario.scalar('sum(streamsynth_llm_requests_total{status="http_429"})')
        == RETRIED_DOCS * len(STAGES) + FAILING_DOCS * len(STAGES) * 3
    )
    assert (scenario.scalar("sum(streamsynth_llm_retries_total)") or 0) > 0
    by_stage = scenario.query("sum by (stage) (streamsynth_records_produced_total)")
    assert {r["metric"]["stage"] for r in by_stage["data"]["result"]} == set(STAGES)
    assert (scenario.scalar("sum(streamsynth_llm_cost_usd_total)") or 0) > 0


def test_health_endpoints_while_running(scenario: Scenario) -> None:
    assert scenario.healthz == (200, "ok\n")
    assert scenario.readyz == (200, "ok\n")


def test_secrets_never_reach_logs_or_metrics(scenario: Scenario) -> None:
    assert scenario.worker_log, "the worker wrote no log"
    assert scenario.metrics_text
    for secret in (FAKE_API_KEY, FAKE_SASL_PASSWORD):
        assert secret not in scenario.worker_log
        assert secret not in scenario.metrics_text
    assert "FAKEKEY" not in scenario.worker_log  # not even a fragment


def test_logs_are_json_with_record_coordinates(scenario: Scenario) -> None:
    entries = [json.loads(line) for line in scenario.worker_log.splitlines() if line.strip()]
    assert entries and all({"ts", "level", "logger", "msg"} <= e.keys() for e in entries)
    dead = [e for e in entries if e["msg"] == "record dead-lettered"]
    assert len(dead) == DEAD_LETTERED
    for entry in dead:
        assert entry["topic"] == INPUT
        assert isinstance(entry["partition"], int) and isinstance(entry["offset"], int)
        assert "stage" in entry
    assert scenario.worker_rc == 0
