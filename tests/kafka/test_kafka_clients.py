"""Consumer and producer options built from the settings."""

from __future__ import annotations

from typing import Any

from streamsynth.config import Settings, settings_from_dict
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
