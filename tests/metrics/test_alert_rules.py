"""The alert rules and the scrape config pass promtool; the rule unit tests pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from promql_helpers import ALERTS, ROOT, alert_exprs, exported_names, metric_names

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does)"
)
DEPLOY = ROOT / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY, check=False
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
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
