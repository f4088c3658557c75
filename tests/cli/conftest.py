"""Fixtures of the CLI tests: a real broker and a CLI runner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from streamsynth.local.broker import free_port, kafka_bootstrap


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """A real broker (the embedded Tansu one unless KAFKA_BOOTSTRAP_SERVERS is set)."""
    with kafka_bootstrap() as servers:
        yield servers


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def dead_bootstrap() -> str:
    """A loopback address where nothing listens (the port was free a moment ago)."""
    return f"127.0.0.1:{free_port()}"
