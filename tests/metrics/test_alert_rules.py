"""The alert rules and the scrape config pass promtool; the rule unit tests pass."""

from __future__ import annotations

import subprocess
from pathlib import Path

from promql_helpers import ALERTS, ROOT, alert_exprs, exported_names, metric_names

DEPLOY = ROOT / "deploy" / "prometheus"


def _promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool: on PATH, or provisioned into the user cache by the ``promtool`` fixture."""
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY, check=False
    )


def test_promtool_check_rules(promtool: Path) -> None:
    result = _promtool(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout


def test_promtool_rule_unit_tests(promtool: Path) -> None:
    result = _promtool(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(promtool: Path) -> None:
    result = _promtool(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_exist() -> None:
    names = {name for name, _ in alert_exprs()}
    for required in (
        "StreamsynthLagGrowing",
        "StreamsynthDLQRate",
        "StreamsynthLLMErrorRatio",
        "StreamsynthCircuitOpen",
        "StreamsynthWorkerDown",
    ):
        assert required in names


def test_alerts_use_only_exported_metrics() -> None:
    exported = exported_names()
    for name, expr in alert_exprs():
        unknown = metric_names(expr) - exported - {"up"}
        assert not unknown, f"{name} uses metrics streamsynth does not export: {unknown}"
