"""Fixtures of the exactly-once tests: a broker with transactions (noida-db).

``KAFKA_BOOTSTRAP_SERVERS`` still wins (it must then support transactions, as any
real Kafka does); otherwise noida-db is started on a free loopback port. Tansu,
the suite's default broker, has no transactions.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess
from streamsynth.local.noida import transactional_bootstrap


@pytest.fixture(scope="session")
def txn_bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS, else a noida-db broker for the whole session."""
    with transactional_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def eos_sim() -> Iterator[SimulatorProcess]:
    """An LLM simulator process answering in 1-5 ms (fast: the kill test runs 20k records).

    Its ``stats().inflight`` tells a test that requests are in flight before a kill.
    """
    config = SimulatorConfig(latency=LatencyModel(kind="uniform", low_s=0.001, high_s=0.005))
    with SimulatorProcess(config) as sim:
        yield sim
