"""deploy/helm/streamsynth: renders offline, passes Kubernetes' schemas, encodes the consumer rules.

Rendering uses PyPI helm-python-sdk (Helm v4 as a library: the same engine and schema
validation as `helm template`). Core manifests are validated with kubernetes-validate in
strict mode (unknown fields are errors). KEDA's ScaledObject/TriggerAuthentication and the
Prometheus Operator's ServiceMonitor/PrometheusRule are CRDs, which kubernetes-validate has
no schemas for: those are checked structurally here (the fields each controller reads, and
that they point at the objects the chart renders).
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamsynth.config import load_settings

# The dev extra installs both (PyPI helm-python-sdk, kubernetes-validate): no skip without them.
helm = importlib.import_module("helm_python")
kv = importlib.import_module("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "streamsynth"
ALL_ON = yaml.safe_load((CHART / "ci" / "all-options-values.yaml").read_text())
KUBE_VERSION = "1.31.0"
RELEASE = "synth"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
VALUE_SETS = {"default": None, "all-options": ALL_ON}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None) -> list[Manifest]:
    out = chart.render(values, name=RELEASE, namespace="streamsynth")
    docs: list[Manifest] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[Manifest]) -> dict[str, Manifest]:
    kinds: dict[str, Manifest] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} objects"
        kinds[doc["kind"]] = doc
    return kinds


def workload(kinds: dict[str, Manifest]) -> Manifest:
    return kinds.get("Deployment") or kinds["StatefulSet"]


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = copy.deepcopy(ALL_ON)
    stack: list[tuple[dict[str, Any], dict[str, Any]]] = [(values, overrides)]
    while stack:
        into, new = stack.pop()
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                stack.append((into[key], value))
            else:
                into[key] = value
    return values


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, chart: Any) -> tuple[dict[str, Any], list[Manifest]]:
    values: dict[str, Any] = chart.merge_values(VALUE_SETS[request.param])
    return values, render(chart, VALUE_SETS[request.param])


def test_lint_reports_no_errors() -> None:
    for values in VALUE_SETS.values():
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not problems, report


def test_core_manifests_pass_strict_kubernetes_validation(
    rendered: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = rendered
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    assert {"ConfigMap", "Service", "PodDisruptionBudget", "ServiceAccount"} <= {
        d["kind"] for d in core
    }
    for doc in core:
        kv.validate(doc, KUBE_VERSION, strict=True)


def test_kubernetes_validate_cli_passes_the_rendered_chart(
    rendered: tuple[dict[str, Any], list[Manifest]], tmp_path: Path
) -> None:
    # The same check through the command line an operator would run on `helm template`.
    _, docs = rendered
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBE_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(" passed for resource ")
    assert passed == sum(d["kind"] not in CRD_KINDS for d in docs), result.stdout


def test_strict_validation_catches_an_unknown_field(chart: Any) -> None:
    # Negative control: the validator really is strict about the workload's pod spec.
    deployment = workload(by_kind(render(chart, None)))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)


def test_all_options_render_every_object(chart: Any) -> None:
    kinds = {d["kind"] for d in render(chart, ALL_ON)}
    assert kinds == {
        "ConfigMap",
        "Service",
        "ServiceAccount",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ScaledObject",
        "TriggerAuthentication",
    }
    default_kinds = {d["kind"] for d in render(chart, None)}
    assert not default_kinds & CRD_KINDS, "defaults must install without optional CRDs"


def _container_env(container: Manifest, pod_name: str) -> dict[str, str]:
    """The container's env as the kubelet would fill it, with stand-ins for Secret values."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = pod_name
        else:
            ref = source["secretKeyRef"]
            env[var["name"]] = f"secret:{ref['name']}/{ref['key']}"
    return env


def test_configmap_config_loads_with_streamsynth_validation(
    rendered: tuple[dict[str, Any], list[Manifest]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values, docs = rendered
    kinds = by_kind(docs)
    pod = workload(kinds)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    config_path = container["args"][container["args"].index("--config") + 1]
    assert Path(config_path).parent == Path(mount["mountPath"])
    path = tmp_path / Path(config_path).name
    path.write_text(kinds["ConfigMap"]["data"][Path(config_path).name])

    for name in [k for k in os.environ if k.startswith("STREAMSYNTH_")]:
        monkeypatch.delenv(name)
    for key, value in _container_env(container, "synth-streamsynth-0").items():
        monkeypatch.setenv(key, value)
    settings = load_settings(path)

    assert settings.metrics.port == container["ports"][0]["containerPort"]
    assert settings.metrics.host == "0.0.0.0"
    if values["staticMembership"]["enabled"]:
        assert settings.kafka.group_instance_id == "synth-streamsynth-0"
    key = values["llmApiKey"]
    if key["secretName"]:
        assert settings.llm.resolve_api_key() == f"secret:{key['secretName']}/{key['secretKey']}"
    if values["kafkaAuth"]["saslSecretName"]:
        assert settings.kafka.sasl_password is not None
        assert settings.kafka.sasl_password.get_secret_value().startswith("secret:")
        assert str(settings.kafka.ssl_cafile).startswith(values["kafkaAuth"]["tlsMountPath"])


def test_secrets_arrive_only_by_reference(
    rendered: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = rendered
    assert "Secret" not in {d["kind"] for d in docs}, "the chart must not create Secrets"
    config = yaml.safe_load(by_kind(docs)["ConfigMap"]["data"]["config.yaml"])
    assert "sasl_password" not in config["kafka"] and "api_key" not in config["llm"]
    env = workload(by_kind(docs))["spec"]["template"]["spec"]["containers"][0].get("env", [])
    for var in env:
        if "PASSWORD" in var["name"] or "API_KEY" in var["name"]:
            assert "secretKeyRef" in var["valueFrom"], var


def test_probes_split_liveness_and_readiness(
    rendered: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = rendered
    kinds = by_kind(docs)
    container = workload(kinds)["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    live = container["livenessProbe"]
    # A restart needs a long run of failures: about a minute, never one slow answer.
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    port = container["ports"][0]
    assert port["name"] == "metrics"
    service_port = kinds["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == "metrics" and service_port["name"] == "metrics"
    assert kinds["Service"]["spec"]["selector"].items() <= (
        workload(kinds)["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("shutdown", [0, 1, 29.2, 60, 600])
def test_grace_period_exceeds_the_shutdown_timeout(chart: Any, shutdown: float) -> None:
    values = {"config": {"worker": {"shutdown_timeout_s": shutdown}}}
    spec = workload(by_kind(render(chart, values)))["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    assert isinstance(grace, int) and grace > shutdown
    assert grace >= math.ceil(shutdown) + chart.values["terminationGraceMarginSeconds"]


def test_grace_period_of_the_rendered_sets(
    rendered: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = rendered
    kinds = by_kind(docs)
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["config.yaml"])
    grace = workload(kinds)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config["worker"]["shutdown_timeout_s"]


def test_static_membership_takes_the_pod_name(chart: Any) -> None:
    def instance_env(values: dict[str, Any] | None) -> list[Manifest]:
        container = workload(by_kind(render(chart, values)))["spec"]["template"]["spec"][
            "containers"
        ][0]
        return [v for v in container.get("env", []) if v["name"].endswith("GROUP_INSTANCE_ID")]

    (on,) = instance_env({"staticMembership": {"enabled": True}})
    assert on["name"] == "STREAMSYNTH_KAFKA__GROUP_INSTANCE_ID"
    assert on["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert instance_env({"staticMembership": {"enabled": False}}) == []


def test_keda_scaled_object(chart: Any) -> None:
    kinds = by_kind(render(chart, ALL_ON))
    scaled = kinds["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = workload(kinds)
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": target["kind"],
        "name": target["metadata"]["name"],
    }
    assert "replicas" not in target["spec"], "the HPA owns replicas under KEDA"
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= ALL_ON["autoscaling"]["partitionCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata is map[string]string"
    kafka = ALL_ON["config"]["kafka"]
    assert meta["bootstrapServers"] == kafka["bootstrap_servers"]
    assert meta["consumerGroup"] == kafka["group_id"]
    assert meta["offsetResetPolicy"] == kafka["auto_offset_reset"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) == ALL_ON["autoscaling"]["lagThreshold"]
    assert "topic" not in meta, "several input topics: KEDA follows the group's topics"
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    auth = kinds["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert params == {
        "username": ("kafka-credentials", "username"),
        "password": ("kafka-credentials", "password"),
        "ca": ("kafka-ca", "ca.crt"),
    }


def test_keda_single_topic_is_named(chart: Any) -> None:
    values = {"autoscaling": {"enabled": True, "minReplicaCount": 0}}
    meta = by_kind(render(chart, values))["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    assert meta["topic"] == "documents" and meta["tls"] == "disable" and "sasl" not in meta


def test_keda_never_exceeds_the_partition_count(chart: Any) -> None:
    too_many = merged({"autoscaling": {"partitionCount": 8, "maxReplicaCount": 9}})
    with pytest.raises(helm.HelmRenderError, match=r"exceeds autoscaling\.partitionCount"):
        render(chart, too_many)
    allowed = merged(
        {"autoscaling": {"partitionCount": 8, "maxReplicaCount": 9, "allowIdleConsumers": True}}
    )
    meta = by_kind(render(chart, allowed))["ScaledObject"]["spec"]
    assert meta["maxReplicaCount"] == 9
    assert meta["triggers"][0]["metadata"]["allowIdleConsumers"] == "true"


def test_service_monitor_selects_the_metrics_service(chart: Any) -> None:
    kinds = by_kind(render(chart, ALL_ON))
    monitor = kinds["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = kinds["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_prometheus_rule_carries_the_alert_file(chart: Any) -> None:
    source = ROOT / "deploy" / "prometheus" / "alerts.yml"
    copy_in_chart = CHART / "files" / "alerts.yml"
    assert copy_in_chart.read_bytes() == source.read_bytes(), (
        "deploy/helm/streamsynth/files/alerts.yml is stale: "
        "cp deploy/prometheus/alerts.yml deploy/helm/streamsynth/files/alerts.yml"
    )
    rule = by_kind(render(chart, ALL_ON))["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups == yaml.safe_load(source.read_text())["groups"]
    assert all(r.get("alert") and r.get("expr") for g in groups for r in g["rules"])


def test_pod_disruption_budget_allows_one_at_a_time(
    rendered: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = rendered
    kinds = by_kind(docs)
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        workload(kinds)["spec"]["template"]["metadata"]["labels"].items()
    )


def test_pod_runs_unprivileged(rendered: tuple[dict[str, Any], list[Manifest]]) -> None:
    _, docs = rendered
    pod = workload(by_kind(docs))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/var/cache/streamsynth"} <= writable


BAD_VALUES = {
    "plaintext-api-key": {"config": {"llm": {"api_key": "sk-123"}}},
    "plaintext-sasl-password": {"config": {"kafka": {"sasl_password": "hunter2"}}},
    "sasl-without-secret": {"config": {"kafka": {"security_protocol": "SASL_SSL"}}},
    "unknown-top-level-key": {"replicas": 3},
    "unknown-workload-kind": {"workloadKind": "DaemonSet"},
    "metrics-on-loopback": {"config": {"metrics": {"host": "127.0.0.1"}}},
    "metrics-disabled": {"config": {"metrics": {"enabled": False}}},
    "zero-grace-margin": {"terminationGraceMarginSeconds": 0},
    "negative-shutdown": {"config": {"worker": {"shutdown_timeout_s": -1}}},
    "no-stages": {"config": {"stages": []}},
    "string-partitions": {"autoscaling": {"partitionCount": "6"}},
    "zero-lag-threshold": {"autoscaling": {"lagThreshold": 0}},
}


@pytest.mark.parametrize("values", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_schema_rejects_broken_values(chart: Any, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE)
