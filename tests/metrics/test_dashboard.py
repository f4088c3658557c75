"""dashboards/streamsynth.json: generated, consistent with the registry, valid Grafana schema."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from promql_helpers import (
    DASHBOARD,
    ROOT,
    exported_names,
    load_dashboard,
    metric_names,
    panel_exprs,
    panels,
    substitute,
)

from streamsynth.local.serving import Replica, ServingConfig, render_metrics


def _vllm_names() -> set[str]:
    """The series names our simulator's serving mode exports, named as vLLM names them."""
    text = render_metrics([Replica(ServingConfig())], "m")
    return {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}


VLLM_METRICS = _vllm_names()


def test_json_matches_generator() -> None:
    spec = importlib.util.spec_from_file_location("dash_gen", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run: python dashboards/generate.py"


def test_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance", "stage", "model", "model_group"}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("job", "instance", "stage", "model", "model_group"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_rows_and_required_panels() -> None:
    dash = load_dashboard()
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == [
        "Throughput and errors per stage (RED)", "Stage $stage", "LLM",
        "Servers (vLLM /metrics)", "Model group $model_group", "Kafka", "Process",
    ]  # fmt: skip
    titles = " | ".join(p["title"] for p in panels(dash)).lower()
    required = (
        "p50 / p95 / p99, tokens / s, 429, concurrency limit, cache hit, cost per hour, "
        "consumer lag, lag trend, commits, rebalances, paused, dlq, cpu, resident memory, "
        "event-loop lag, error ratio, invalid structured outputs, context-length rejections, "
        "truncated answers, response cache entries and evictions, queue wait for a "
        "concurrency slot, server requests running / waiting, server prefix-cache hit rate, "
        "server generation tokens / s"
    )
    for needle in required.split(", "):
        assert needle in titles, needle


def test_a_row_per_stage_shows_produced_skipped_filtered_dlq() -> None:
    dash = load_dashboard()
    [row] = [p for p in dash["panels"] if p["type"] == "row" and p.get("repeat") == "stage"]
    start = dash["panels"].index(row)
    end = next(
        i for i, p in enumerate(dash["panels"][start + 1 :], start + 1) if p["type"] == "row"
    )
    exprs = " ".join(t["expr"] for p in dash["panels"][start + 1 : end] for t in p["targets"])
    for metric in ("produced", "skipped", "filtered", "dlq"):
        assert f"streamsynth_records_{metric}_total" in exprs, metric
    stage_var = next(v for v in dash["templating"]["list"] if v["name"] == "stage")
    assert "streamsynth_records_skipped_total" in stage_var["query"]["query"]


def test_every_query_uses_exported_metrics_and_the_variables() -> None:
    exported = exported_names() | {"up"} | VLLM_METRICS
    for where, expr in panel_exprs(load_dashboard()):
        assert not metric_names(expr) - exported, f"{where}: {metric_names(expr) - exported}"
        assert '{job=~"$job", instance=~"$instance"' in expr, where
        substitute(expr)  # raises on an unknown variable


def test_panel_ids_unique_and_grid_fits() -> None:
    every = load_dashboard()["panels"]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    for p in every:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def _type_check(tsc: Path, dashboard: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """tsc on `const d: Dashboard = <json literal>`: object literals get excess-property checks.

    ``tsc`` comes from the ``grafana_tsc`` fixture (npm packages in the user cache); the
    source goes in a throw-away folder beside their node_modules, so imports resolve.
    """
    with tempfile.TemporaryDirectory(dir=tsc.parents[2], prefix="check-") as tmp:
        source = Path(tmp) / "dashboard.ts"
        source.write_text(
            'import type { Dashboard } from "@grafana/schema";\n'
            f"export const dashboard: Dashboard = {json.dumps(dashboard, indent=2)};\n"
        )
        return subprocess.run(
            [str(tsc), "--noEmit", "--strict", "--module", "esnext", "--moduleResolution",
             "bundler", "--target", "es2022", source.name],
            capture_output=True, text=True, timeout=120, cwd=tmp, check=False,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip


def test_dashboard_type_checks_against_grafana_schema(grafana_tsc: Path) -> None:
    result = _type_check(grafana_tsc, load_dashboard())
    assert result.returncode == 0, result.stdout + result.stderr


def test_type_check_catches_a_broken_dashboard(grafana_tsc: Path) -> None:
    # A control: the check must reject what Grafana's schema forbids.
    broken = load_dashboard()
    broken["panels"][1]["gridPos"]["w"] = "wide"
    broken["templating"]["list"][1]["definitely_not_a_field"] = True
    result = _type_check(grafana_tsc, broken)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "'\"definitely_not_a_field\"' does not exist in type 'VariableModel'" in out
    assert "Type 'string' is not assignable to type 'number'" in out


def _row_exprs(dash: dict[str, Any], repeat: str) -> str:
    [row] = [p for p in dash["panels"] if p["type"] == "row" and p.get("repeat") == repeat]
    start = dash["panels"].index(row)
    end = next(
        i for i, p in enumerate(dash["panels"][start + 1 :], start + 1) if p["type"] == "row"
    )
    return " ".join(t["expr"] for p in dash["panels"][start + 1 : end] for t in p["targets"])


def test_a_row_per_model_group_with_routing_queues_and_prefix_cache_per_replica() -> None:
    dash = load_dashboard()
    exprs = _row_exprs(dash, "model_group")
    for metric in (
        "streamsynth_llm_requests_total",
        "streamsynth_llm_queue_wait_seconds_bucket",
        "streamsynth_llm_routed_total",
        "streamsynth_llm_endpoint_prompt_tokens_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
    ):
        assert metric in exprs, metric
    # Per-endpoint series are narrowed to the group through the endpoint -> group join.
    assert exprs.count('streamsynth_llm_endpoint_group{job=~"$job", instance=~"$instance", '
                       'model_group=~"$model_group"}') >= 3  # fmt: skip
    assert 'model_name=~"$model_group"' in exprs
