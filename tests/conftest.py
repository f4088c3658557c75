"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

# Imported up front, at collection: Hypothesis imports its optimiser lazily in the middle
# of a property test, and pytest's assertion rewriter parses it then. On CPython 3.11.7
# that parse once failed with "SystemError: AST constructor recursion depth mismatch" (a
# defect of CPython's AST depth counter), failing an unrelated test.
import hypothesis.internal.conjecture.optimiser  # noqa: F401
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
