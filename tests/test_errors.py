"""Every error streamsynth defines hangs under one root and is drawn in its tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import streamsynth
import streamsynth.errors
from streamsynth.errors import ConfigError, StreamsynthError
from streamsynth.kafka.dlq import Failure, error_reason
from streamsynth.llm.errors import EmptyOutputError, RateLimitError, status_error


def _our_exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(streamsynth.__path__, "streamsynth."):
        if info.name.endswith("__main__"):
            continue  # entry points install signal handlers when imported
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseException)
                and obj.__module__.startswith("streamsynth.")
                and not obj.__name__.startswith("_")
            ):
                found[obj.__qualname__] = obj
    return sorted(found.values(), key=lambda c: c.__name__)


CLASSES = _our_exception_classes()


def test_the_walk_finds_the_families() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"ConfigError", "EngineError", "LLMError", "SinkClosedError", "CliError"} <= names
    assert {"BrokerUnavailableError", "TokenizerUnavailableError", "ModelUnavailable"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_a_streamsynth_error_with_a_label(cls: type[BaseException]) -> None:
    assert issubclass(cls, StreamsynthError)
    assert isinstance(cls.error_type, str) and cls.error_type
    assert cls.error_type == cls.error_type.lower() and " " not in cls.error_type
    assert isinstance(cls.retryable, bool)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_drawn_in_the_tree(cls: type[BaseException]) -> None:
    assert issubclass(cls, StreamsynthError)
    tree = streamsynth.errors.__doc__ or ""
    line = next((ln for ln in tree.splitlines() if f" {cls.__name__} " in f"{ln} "), None)
    assert line is not None, f"{cls.__name__} is missing from the tree in streamsynth/errors.py"
    *_, error_type, retry = line.split()
    assert error_type == cls.error_type, f"the tree gives {cls.__name__} another error_type"
    assert retry == ("yes" if cls.retryable else "no"), f"the tree's retry for {cls.__name__}"


def test_config_error_stays_a_value_error() -> None:
    with pytest.raises(ValueError):
        raise ConfigError("kafka.bootstrap_servers: bad")


def test_the_dlq_reason_is_the_class_attribute() -> None:
    assert error_reason(status_error(429, "slow down")) == "http_429"
    assert isinstance(status_error(429, "x"), RateLimitError)
    assert error_reason(EmptyOutputError("no text")) == "empty_output"
    assert Failure.from_exception(KeyError("k"), stage="s").reason == "KeyError"
