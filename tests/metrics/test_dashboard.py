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


def test_json_matches_generator() -> None:
    spec = importlib.util.spec_from_file_location("dash_gen", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run: python dashboards/generate.py"


def test_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance", "stage", "model"}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("job", "instance", "stage", "model"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_rows_and_required_panels() -> None:
    dash = load_dashboard()
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == [
        "Throughput and errors per stage (RED)", "Stage $stage", "LLM", "Kafka", "Process",
    ]  # fmt: skip
    titles = " | ".join(p["title"] for p in panels(dash)).lower()
    required = (
        "p50 / p95 / p99, tokens / s, 429, concurrency limit, cache hit, cost per hour, "
        "consumer lag, lag trend, commits, rebalances, paused, dlq, cpu, resident memory, "
        "event-loop lag, error ratio, invalid structured outputs, context-length rejections, "
        "truncated answers, response cache entries and evictions"
    )
    for needle in required.split(", "):
        assert needle in titles, needle


def test_a_row_per_stage_shows_produced_skipped_filtered_dlq() -> None:
    dash = load_dashboard()
    [row] = [p for p in dash["panels"] if p["type"] == "row" and p.get("repeat")]
    assert row["repeat"] == "stage"
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
    exported = exported_names() | {"up"}
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
