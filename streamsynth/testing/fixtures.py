"""pytest fixtures of the harness (loaded by the test suite's conftest as a plugin).

* ``kafka_bootstrap``: a real broker for the session (``KAFKA_BOOTSTRAP_SERVERS``, else
  testcontainers' Kafka where Docker answers, else the embedded Tansu broker).
* ``prometheus_bin`` / ``promtool``: the real Prometheus tools, found on PATH or
  provisioned into the user cache; the session fails, saying why, when neither works.
* ``grafana_tsc``: ``tsc`` with ``@grafana/schema`` installed beside it (npm, user cache).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamsynth.local.broker import kafka_bootstrap as _kafka_bootstrap
from streamsynth.testing import tools


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS, else testcontainers' Kafka, else the embedded Tansu broker."""
    with _kafka_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def prometheus_bin() -> Iterator[Path]:
    """The directory of ``prometheus`` and ``promtool``, also put first on PATH meanwhile."""
    try:
        bindir = tools.prometheus_bindir()
    except tools.ToolUnavailable as exc:
        pytest.fail(f"Prometheus is needed by this test and could not be provisioned: {exc}")
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(bindir), saved])
    try:
        yield bindir
    finally:
        os.environ["PATH"] = saved


@pytest.fixture(scope="session")
def promtool(prometheus_bin: Path) -> Path:
    return prometheus_bin / "promtool"


@pytest.fixture(scope="session")
def grafana_tsc() -> Path:
    """``tsc`` from a directory whose node_modules hold ``@grafana/schema``."""
    try:
        return tools.provision_schema_packages()
    except tools.ToolUnavailable as exc:
        pytest.fail(f"the dashboard type-check could not be set up: {exc}")
