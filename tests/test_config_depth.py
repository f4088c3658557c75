"""Depth limits the configuration enforces: the openai transport is refused where it collapses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streamsynth.config import OPENAI_MAX_CONCURRENCY, LLMSettings

URL = "http://127.0.0.1:8000/v1"


def test_openai_transport_is_refused_above_its_depth() -> None:
    with pytest.raises(ValidationError, match=r"max_concurrency: the openai transport collapses"):
        LLMSettings(base_url=URL, model="m", transport="openai")  # default 1024 in flight
    ok = LLMSettings(
        base_url=URL, model="m", transport="openai", max_concurrency=OPENAI_MAX_CONCURRENCY
    )
    assert ok.max_concurrency == OPENAI_MAX_CONCURRENCY


def test_default_transport_takes_a_vllm_replica_depth_by_default() -> None:
    settings = LLMSettings(base_url=URL, model="m")
    assert settings.transport == "http1" and settings.max_concurrency == 1024


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
def test_the_lean_transports_take_thousands_in_flight(transport: str) -> None:
    settings = LLMSettings(base_url=URL, model="m", transport=transport, max_concurrency=8192)
    assert settings.max_concurrency == 8192
