"""The broker chain: KAFKA_BOOTSTRAP_SERVERS, testcontainers' Kafka where Docker answers,
else the embedded broker. The Docker check is faked; the embedded broker is real."""

from __future__ import annotations

import socket
import sys
import types
from typing import Any

import pytest

from streamsynth.local import broker


class FakeKafkaContainer:
    """Stands in for testcontainers.kafka.KafkaContainer (no Docker engine here)."""

    instances: list[FakeKafkaContainer] = []

    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        self.entered = self.exited = False
        self.fail = fail
        FakeKafkaContainer.instances.append(self)

    def __enter__(self) -> FakeKafkaContainer:
        if self.fail:
            raise RuntimeError("image not found")
        self.entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited = True

    def get_bootstrap_server(self) -> str:
        return "127.0.0.1:39092"


@pytest.fixture
def fake_testcontainers(monkeypatch: pytest.MonkeyPatch) -> type[FakeKafkaContainer]:
    FakeKafkaContainer.instances = []
    module = types.ModuleType("testcontainers.kafka")
    module.KafkaContainer = FakeKafkaContainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "testcontainers.kafka", module)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    return FakeKafkaContainer


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def test_env_wins_over_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setattr(broker, "docker_answers", lambda: pytest.fail("Docker was asked"))
    with broker.kafka_bootstrap() as bootstrap:
        assert bootstrap == "127.0.0.1:1"


def test_testcontainers_kafka_where_docker_answers(
    monkeypatch: pytest.MonkeyPatch, fake_testcontainers: type[FakeKafkaContainer]
) -> None:
    monkeypatch.setattr(broker, "docker_answers", lambda: True)
    with broker.kafka_bootstrap() as bootstrap:
        assert bootstrap == "127.0.0.1:39092"
        (container,) = fake_testcontainers.instances
        assert container.entered and not container.exited
    assert container.exited  # stopped with the context


def test_a_container_that_cannot_start_falls_back_to_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, fake_testcontainers: type[FakeKafkaContainer]
) -> None:
    monkeypatch.setattr(broker, "docker_answers", lambda: True)
    module = sys.modules["testcontainers.kafka"]
    module.KafkaContainer = lambda: FakeKafkaContainer(fail=True)  # type: ignore[attr-defined]
    with (
        pytest.warns(RuntimeWarning, match="image not found"),
        broker.kafka_bootstrap() as bootstrap,
    ):
        assert bootstrap != "127.0.0.1:39092"
        assert _listening(bootstrap)  # the embedded Tansu broker
    assert not _listening(bootstrap)


def test_without_docker_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, fake_testcontainers: type[FakeKafkaContainer]
) -> None:
    monkeypatch.setattr(broker, "docker_answers", lambda: False)
    with broker.kafka_bootstrap() as bootstrap:
        assert _listening(bootstrap)
    assert fake_testcontainers.instances == []
    assert not _listening(bootstrap)


def test_docker_answers_is_false_without_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # No engine at this socket: the real check answers False instead of raising.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert broker.docker_answers(timeout_s=1.0) is False
