"""Fixtures of the worker's tests: an LLM simulator process (the broker: ``kafka_bootstrap``
from the harness plugin, see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """An LLM simulator in its own process: a few ms per request, no random faults.

    Tests target single records with in-prompt markers ([[sim:500]], [[sim:latency=10]]).
    """
    config = SimulatorConfig(latency=LatencyModel(kind="uniform", low_s=0.002, high_s=0.01))
    with SimulatorProcess(config) as sim:
        yield sim.base_url
