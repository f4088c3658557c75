"""Children: the observer's memo of labelled children behaves as ``labels()``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from streamsynth.llm.types import Usage
from streamsynth.metrics.registry import Children, Metrics, PrometheusLLMObserver


def test_children_returns_the_child_labels_would() -> None:
    counter = Counter("x", "x", ["a", "b"], registry=CollectorRegistry())
    children = Children(counter)
    assert children("1", "2") is counter.labels("1", "2")
    assert children("1", "2") is children("1", "2")
    children("1", "2").inc(3)
    counter.labels("1", "3").inc()
    assert children("1", "3") is counter.labels("1", "3")
    assert counter.labels("1", "2")._value.get() == 3


def test_observer_counts_through_children_into_the_registry() -> None:
    metrics = Metrics()
    observer = PrometheusLLMObserver(metrics)
    usage = Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=6)
    for _ in range(2):
        observer.on_operation(
            stage="s", model="m", endpoint="e", duration_s=0.5, error_type=None,
            usage=usage, attempts=1,
        )  # fmt: skip
        observer.on_attempt(stage="s", model="m", endpoint="e", status="ok")
    value = metrics.registry.get_sample_value
    assert (
        value("streamsynth_llm_tokens_total", {"stage": "s", "model": "m", "type": "input"}) == 20
    )
    assert (
        value("streamsynth_llm_tokens_total", {"stage": "s", "model": "m", "type": "output"}) == 8
    )
    cached = {"endpoint": "e", "cached": "true"}
    assert value("streamsynth_llm_endpoint_prompt_tokens_total", cached) == 12
    assert (
        value("streamsynth_llm_requests_total", {"stage": "s", "model": "m", "status": "ok"}) == 2
    )
