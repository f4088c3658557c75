"""Consumer, producer and admin options built from the settings (no broker needed)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from certs import self_signed
from pydantic import SecretStr, ValidationError

from streamsynth.config import Settings, settings_from_dict
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.kafka.sink import producer_kwargs
from streamsynth.kafka.source import consumer_kwargs


def settings(**kafka: Any) -> Settings:
    return settings_from_dict(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "input_topic": "in", "dlq_topic": "dlq",
                      **kafka},
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "stages": [{"task": "custom", "prompt": "{document}", "output_field": "o",
                        "output_topic": "out"}],
            "worker": {"drain_timeout_s": 20},
        }
    )  # fmt: skip


def test_consumer_commits_manually_and_waits_for_the_drain() -> None:
    kw = consumer_kwargs(settings(group_instance_id="pod-0", session_timeout_ms=6000))
    assert kw["enable_auto_commit"] is False
    assert kw["group_instance_id"] == "pod-0"
    # The group waits for our revoke drain (20 s + margin), within max.poll.interval.
    assert kw["rebalance_timeout_ms"] == 25_000
    assert kw["max_partition_fetch_bytes"] >= 1_048_576 + 65_536


def test_producer_acks_all_without_idempotence() -> None:
    kw = producer_kwargs(settings(linger_ms=7, compression_type="gzip"))
    assert kw["acks"] == "all"
    assert kw["enable_idempotence"] is False  # Tansu rejects InitProducerId
    assert kw["linger_ms"] == 7 and kw["compression_type"] == "gzip"


def test_sasl_credentials_reach_both_clients() -> None:
    s = settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret-pw",
    )
    for kw in (consumer_kwargs(s), producer_kwargs(s)):
        assert kw["security_protocol"] == "SASL_PLAINTEXT"
        assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kw["sasl_plain_username"] == "svc"
        assert kw["sasl_plain_password"] == "s3cret-pw"
    assert "s3cret-pw" not in repr(s)  # the settings never print it


# -- KafkaConnection: the one place clients are built ------------------------------------
def test_connection_comes_from_the_kafka_section() -> None:
    s = settings(
        client_id="svc-1",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="pw-256",
    )
    conn = KafkaConnection.from_settings(s.kafka)
    assert conn.bootstrap_servers == "127.0.0.1:1" and conn.client_id == "svc-1"
    kwargs = [conn.consumer_kwargs(group_id="g"), conn.producer_kwargs(acks=1), conn.admin_kwargs()]
    for kw in kwargs:
        assert kw["sasl_mechanism"] == "SCRAM-SHA-256"
        assert kw["sasl_plain_username"] == "svc"
        assert kw["sasl_plain_password"] == "pw-256"
        assert kw["client_id"] == "svc-1"
    assert kwargs[0]["group_id"] == "g" and kwargs[1]["acks"] == 1
    assert "pw-256" not in repr(conn) and "pw-256" not in str(conn.model_dump())


def test_plaintext_sends_no_security_options() -> None:
    kw = KafkaConnection(bootstrap_servers="127.0.0.1:9092").client_kwargs()
    assert kw == {
        "bootstrap_servers": "127.0.0.1:9092",
        "client_id": "streamsynth",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_without_credentials_is_refused() -> None:
    with pytest.raises(ValidationError, match="sasl_mechanism, sasl_username and sasl_password"):
        KafkaConnection(bootstrap_servers="127.0.0.1:1", security_protocol="SASL_SSL")


def test_ssl_files_and_key_password_make_the_tls_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, password=b"key-pw")
    conn = KafkaConnection(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SSL",
        ssl_cafile=cert,
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_password=SecretStr("key-pw"),
    )
    context = conn.client_kwargs()["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # our CA, and only it
    wrong = conn.model_copy(update={"ssl_password": SecretStr("nope")})
    with pytest.raises(ssl.SSLError):
        wrong.client_kwargs()  # the key password is really used to open the key


async def test_built_clients_carry_the_security_settings(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    conn = KafkaConnection(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password=SecretStr("alice-pw"),
        ssl_cafile=cert,
    )
    consumer, producer, admin = conn.consumer(group_id="g"), conn.producer(), conn.admin()
    try:
        # Not started: no broker needed. Each client's network layer holds the options.
        for client in (consumer._client, producer.client, admin._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "PLAIN"
            assert client._sasl_plain_username == "alice"
            assert client._sasl_plain_password == "alice-pw"
            assert isinstance(client._ssl_context, ssl.SSLContext)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


def test_connection_and_config_apply_the_same_rules() -> None:
    bad = {"bootstrap_servers": "kafka://broker:9092"}
    with pytest.raises(ValidationError) as conn_error:
        KafkaConnection(**bad)
    with pytest.raises(ValueError) as config_error:
        settings(**bad)
    rule = "must be host:port, without a scheme or user"
    assert rule in str(conn_error.value) and rule in str(config_error.value)
    sasl = {"bootstrap_servers": "127.0.0.1:1", "security_protocol": "SASL_SSL"}
    with pytest.raises(ValueError, match="sasl_mechanism, sasl_username and sasl_password"):
        settings(**sasl)
