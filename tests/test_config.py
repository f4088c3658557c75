"""Config loading: YAML + env overrides, field-named errors, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from streamsynth.config import EXAMPLE_CONFIG, ConfigError, load_settings, settings_from_dict
from streamsynth.llm.types import GenerationConfig


def example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    assert isinstance(data, dict)
    return data


def test_example_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(EXAMPLE_CONFIG)
    s = load_settings(path)
    assert s.kafka.input_topics == ["documents"]
    assert [st.stage_name for st in s.stages] == ["diverse_qa", "summary"]
    assert s.llm.base_urls == ["http://127.0.0.1:8000/v1"]
    assert s.stages[0].generation.apply(GenerationConfig()).max_tokens == 600
    assert s.stages[0].generation.apply(GenerationConfig()).temperature == 0.5


def test_env_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSYNTH_LLM__MAX_CONCURRENCY", "7")
    monkeypatch.setenv("STREAMSYNTH_KAFKA__GROUP_INSTANCE_ID", "pod-1")
    s = settings_from_dict(example())
    assert s.llm.max_concurrency == 7
    assert s.kafka.group_instance_id == "pod-1"
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"  # the file's other keys survive


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["kafka"].pop("bootstrap_servers"), "kafka.bootstrap_servers: Field required"),
        (lambda d: d["llm"].update(max_concurrency=0), "llm.max_concurrency"),
        (lambda d: d["stages"][0].update(task="nope"), "stages.0.task"),
        (lambda d: d["stages"][1].update(prompt="no placeholder"), "{document}"),
        (lambda d: d["stages"][1].pop("output_field"), "output_field"),
        (lambda d: d["kafka"].update(typo_key=1), "kafka.typo_key"),
        (lambda d: d["llm"].update(base_url="ftp://x"), "must start with http"),
        (lambda d: d["llm"].update(base_url="http://u:pw@h/v1"), "must not carry credentials"),
        (lambda d: d["stages"][0].update(generation={"temperature": 9}), "temperature"),
        (lambda d: d["kafka"].update(dlq_topic="documents"), "dlq_topic"),
        (lambda d: d.update(stages=[]), "stages"),
    ],
)
def test_bad_config_names_the_field(mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    data = example()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    assert expected in str(info.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_sasl_needs_credentials_and_secrets_are_masked() -> None:
    data = example()
    data["kafka"]["security_protocol"] = "SASL_SSL"
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        settings_from_dict(data)
    data["kafka"].update(sasl_mechanism="PLAIN", sasl_username="u", sasl_password="hunter2-secret")
    s = settings_from_dict(data)
    assert "hunter2-secret" not in repr(s)
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "hunter2-secret"


def test_api_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = example()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert settings_from_dict(data).llm.resolve_api_key() == "sk-from-env"
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    data["llm"].pop("api_key_env")
    data["llm"]["api_key_file"] = str(key_file)
    assert settings_from_dict(data).llm.resolve_api_key() == "sk-from-file"
    data["llm"]["api_key"] = "x"
    with pytest.raises(ConfigError, match="only one of"):
        settings_from_dict(data)
