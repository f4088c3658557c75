"""Where the dashboard's and the alert rules' PromQL lives, and how tests substitute it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from streamsynth.metrics.registry import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "streamsynth.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

#: Grafana variables as "All" would expand them, and a fixed rate interval.
SUBSTITUTIONS = {
    "$__rate_interval": "15s",
    "$job": ".*",
    "$instance": ".*",
    "$stage": ".*",
    "$model": ".*",
    "$model_group": ".*",
}


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, raw expr) for every query target."""
    return [
        (f"{p['title']}/{t['refId']}", t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]


def substitute(expr: str) -> str:
    # Longest names first so "$__rate_interval" is not touched by a shorter variable.
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, SUBSTITUTIONS[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"] if "alert" in r]


_METRIC_REF = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def metric_names(expr: str) -> set[str]:
    """Metric names used with a selector (every query here selects with braces)."""
    return set(_METRIC_REF.findall(expr))


def exported_names() -> set[str]:
    """Every series name the registry can expose, including unobserved labelled ones."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names
