"""The top-level façade: the names a program needs, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import streamsynth
from streamsynth.config import Settings, load_settings
from streamsynth.kafka.runtime import run_worker
from streamsynth.kafka.worker import Worker
from streamsynth.llm.factory import build_llm_client
from streamsynth.stages.synthetic import BaseSyntheticStage, SyntheticStage


def test_facade_names_are_the_real_objects() -> None:
    from streamsynth import BaseSyntheticStage as Base
    from streamsynth import Settings as S
    from streamsynth import SyntheticStage as Synth
    from streamsynth import Worker as W
    from streamsynth import build_llm_client as build
    from streamsynth import load_settings as load
    from streamsynth import run_worker as run

    assert (S, load, W, run, Synth, Base, build) == (
        Settings, load_settings, Worker, run_worker, SyntheticStage, BaseSyntheticStage,
        build_llm_client,
    )  # fmt: skip
    assert set(streamsynth.__all__) <= set(dir(streamsynth))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Wroker'"):
        _ = streamsynth.Wroker  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    # The early-signal capture of 'streamsynth run' relies on this (kafka/runtime.py).
    code = (
        "import sys, streamsynth, streamsynth.kafka, streamsynth.kafka.runtime; "
        "heavy = [m for m in ('aiokafka', 'aiohttp', 'pydantic', 'typer', 'openai') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
