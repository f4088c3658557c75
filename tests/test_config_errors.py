"""Every configuration mistake is found at load, before any connection, named by its field.

Through ``streamsynth run`` each one exits 2 with exactly one ``error:`` line and no
traceback; no error ever quotes a secret, in any escaped form.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamsynth.config import ConfigError, load_settings
from streamsynth.redact import clear_secrets

#: Non-ASCII and a backslash: the characters that escaping turns into other text.
SECRET = "Sé\\crêt-кл\\ю4"
SECRET_FORMS = (
    SECRET,
    SECRET.replace("\\", "\\\\"),
    ascii(SECRET)[1:-1],
    repr(SECRET.encode())[2:-1],
    "\\u00e9",  # the first escaped character alone would already be a leak of its shape
)


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


def base_config() -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    return {
        "kafka": {
            "bootstrap_servers": "127.0.0.1:1",
            "input_topic": f"in-{tag}",
            "dlq_topic": f"dlq-{tag}",
        },
        "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "cache": {"kind": "none"}},
        "stages": [
            {
                "task": "custom",
                "prompt": "Summarize:\n\n{document}",
                "output_field": "summary",
                "output_topic": f"out-{tag}",
            }
        ],
        "metrics": {"enabled": False},
    }


Mutation = Callable[[dict[str, Any]], None]


def _prompt(template: str) -> Mutation:
    return lambda c: c["stages"][0].update(prompt=template)


def _kafka(**values: Any) -> Mutation:
    return lambda c: c["kafka"].update(values)


def _llm(**values: Any) -> Mutation:
    return lambda c: c["llm"].update(values)


def _same_topic(a: tuple[str, ...], b: tuple[str, ...]) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        node: Any = c  # dicts and lists along the path
        for key in a[:-1]:
            node = node[key] if not key.isdigit() else node[int(key)]
        target: Any = c
        for key in b[:-1]:
            target = target[key] if not key.isdigit() else target[int(key)]
        target[b[-1]] = node[a[-1]]

    return mutate


BAD: dict[str, tuple[Mutation, str]] = {
    "unknown placeholder": (_prompt("Hi {n}: {document}"), "stages.0.prompt"),
    "only a literal": (_prompt("Echo {{document}} please"), "stages.0.prompt"),
    "stray brace": (_prompt("Summarize } {document}"), "stages.0.prompt"),
    "positional": (_prompt("{} {document}"), "stages.0.prompt"),
    "task prompt": (
        lambda c: c["stages"].append(
            {"task": "distill", "prompt": "{text}", "output_topic": "distilled"}
        ),
        "stages.1.prompt",
    ),
    "bootstrap no port": (_kafka(bootstrap_servers="localhost"), "kafka.bootstrap_servers"),
    "bootstrap bad port": (_kafka(bootstrap_servers="h:99999"), "kafka.bootstrap_servers"),
    "bootstrap stray comma": (_kafka(bootstrap_servers="a:1,,b:2"), "kafka.bootstrap_servers"),
    "bootstrap url": (_kafka(bootstrap_servers="kafka://h:9092"), "kafka.bootstrap_servers"),
    "bootstrap spaces": (_kafka(bootstrap_servers="my host:9092"), "kafka.bootstrap_servers"),
    "filtered is input": (
        _same_topic(("kafka", "input_topic"), ("kafka", "filtered_topic")),
        "kafka.filtered_topic",
    ),
    "dlq is filtered": (
        _same_topic(("kafka", "dlq_topic"), ("kafka", "filtered_topic")),
        "kafka.filtered_topic",
    ),
    "output is dlq": (
        _same_topic(("kafka", "dlq_topic"), ("stages", "0", "output_topic")),
        "stages.0.output_topic",
    ),
    "output is filtered": (
        lambda c: c["kafka"].update(filtered_topic=c["stages"][0]["output_topic"]),
        "stages.0.output_topic",
    ),
    "output is input": (
        _same_topic(("kafka", "input_topic"), ("stages", "0", "output_topic")),
        "stages.0.output_topic",
    ),
    "dlq is input": (
        _same_topic(("kafka", "input_topic"), ("kafka", "dlq_topic")),
        "kafka.dlq_topic",
    ),
}


#: Found when the process resolves the key, before it connects to anything.
AT_START: dict[str, tuple[Mutation, str]] = {
    "api_key_env unset": (_llm(api_key_env="STREAMSYNTH_TEST_NOT_SET_X1"), "llm.api_key_env"),
    "api_key_file missing": (_llm(api_key_file="/nonexistent/key.txt"), "llm.api_key_file"),
}


def _write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_each_mistake_is_found_at_load_and_names_its_field(case: str, tmp_path: Path) -> None:
    mutate, field = BAD[case]
    cfg = base_config()
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, cfg))
    assert field in str(info.value)


def test_the_valid_base_config_loads(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, base_config()))
    assert settings.kafka.bootstrap_servers == "127.0.0.1:1"
    cfg = base_config()
    cfg["kafka"]["bootstrap_servers"] = "k1.internal:9092, 10.0.0.2:9093,[::1]:9094"
    cfg["stages"][0]["prompt"] = "Keep {{braces}} literal: {document}"
    assert load_settings(_write(tmp_path, cfg)).stages[0].prompt is not None


def _assert_no_secret(text: str) -> None:
    for form in SECRET_FORMS:
        assert form not in text, f"{form!r} leaked in {text!r}"


def _secret_cases(tmp_path: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}

    def add(name: str, cfg: dict[str, Any]) -> None:
        folder = tmp_path / name
        folder.mkdir()
        cases[name] = _write(folder, cfg)

    cfg = base_config()
    cfg["llm"]["base_url"] = f"ftp://user:{SECRET}@models.example/v1"
    add("url credentials", cfg)
    cfg = base_config()
    cfg["llm"]["base_url"] = f"http://user:{SECRET}@models.example/v1"
    add("http credentials", cfg)
    cfg = base_config()
    cfg["llm"]["api_key"] = SECRET
    cfg["llm"]["max_concurrency"] = "lots"  # another field is wrong
    add("api key beside an error", cfg)
    cfg = base_config()
    cfg["llm"]["api_key"] = {"nested": SECRET}  # the secret field itself is wrong
    add("bad api key", cfg)
    cfg = base_config()
    cfg["kafka"].update(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SECRET,
        bootstrap_servers=f"u:{SECRET}@host:9092",
    )
    add("sasl password in bootstrap", cfg)
    folder = tmp_path / "malformed yaml"
    folder.mkdir()
    path = folder / "worker.yaml"
    text = yaml.safe_dump(base_config())
    path.write_text(text + f'llm_extra:\n  api_key: "{SECRET}\n   : : [\n', encoding="utf-8")
    cases["malformed yaml"] = path
    folder = tmp_path / "malformed yaml 2"
    folder.mkdir()
    path = folder / "worker.yaml"
    path.write_text(f"llm:\n  api_key: {SECRET}: oops\n  model: m\n", encoding="utf-8")
    cases["malformed yaml 2"] = path
    return cases


def test_no_config_error_quotes_a_secret(tmp_path: Path) -> None:
    for name, path in _secret_cases(tmp_path).items():
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        _assert_no_secret(str(info.value))
        assert str(info.value), name


# -- through the process that ships -------------------------------------------------------

_SCRIPT = Path(sys.executable).parent / "streamsynth"
RUN = (
    [str(_SCRIPT), "run"]
    if _SCRIPT.exists()
    else [sys.executable, "-m", "streamsynth.cli.main", "run"]
)


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNTH_")}
    return subprocess.run(
        [*RUN, "--config", str(path)], capture_output=True, text=True, env=env, timeout=120
    )


def _assert_one_error_line(proc: subprocess.CompletedProcess[str], field: str | None) -> str:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip() == errors[0], proc.stderr  # nothing else: no JSON log lines
    assert "Traceback" not in proc.stdout + proc.stderr
    if field is not None:
        assert field in errors[0]
    return errors[0]


@pytest.mark.parametrize(
    "case", ["unknown placeholder", "stray brace", "bootstrap no port", "dlq is filtered",
             "api_key_file missing", "api_key_env unset"],
)  # fmt: skip
def test_streamsynth_run_exits_2_with_one_error_line(case: str, tmp_path: Path) -> None:
    mutate, field = {**BAD, **AT_START}[case]
    cfg = base_config()
    mutate(cfg)
    _assert_one_error_line(_run(_write(tmp_path, cfg)), field)


def test_streamsynth_run_never_prints_a_secret(tmp_path: Path) -> None:
    cases = _secret_cases(tmp_path)
    for name in ("url credentials", "malformed yaml", "sasl password in bootstrap"):
        proc = _run(cases[name])
        line = _assert_one_error_line(proc, None)
        _assert_no_secret(proc.stdout + proc.stderr)
        assert line, name
