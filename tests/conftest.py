"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamsynth.local.llm_simulator import LLMSimulator

# The harness's fixtures: kafka_bootstrap, prometheus_bin, promtool, grafana_tsc.
pytest_plugins = ["streamsynth.testing.fixtures"]


# -- LLM simulator (owner: transport/simulator helper) ---------------------------------
@pytest.fixture
async def llm_sim() -> AsyncIterator[LLMSimulator]:
    """A started in-process :class:`LLMSimulator` with the default config (0 ms, no faults)."""
    async with LLMSimulator() as sim:
        yield sim
