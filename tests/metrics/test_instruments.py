"""The lock-free instruments expose exactly what prometheus_client's own would."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamsynth.metrics.instruments import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.1, 1.0, 10.0)
#: Observations on, between and beyond the bounds, negative and infinite ones too.
OBSERVED = (0.0, 0.1, 0.100001, 0.5, 1.0, 3.0, 10.0, 10.5, 1e9, math.inf, -2.0)


def _exposition(counter: type[Counter], gauge: type[Gauge], histogram: type[Histogram]) -> str:
    registry = CollectorRegistry()
    c = counter("c", "a counter", ["stage"], registry=registry)
    g = gauge("g", "a gauge", ["endpoint"], registry=registry)
    h = histogram("h", "a histogram", ["stage"], buckets=BUCKETS, registry=registry)
    c.labels("a").inc()
    c.labels("a").inc(2.5)
    c.labels("b").inc(0)
    g.labels("x").set(7)
    g.labels("x").inc(3)
    g.labels("x").dec(1.5)
    g.labels("y").set(-1)
    for value in OBSERVED:
        h.labels("a").observe(value)
    h.labels("b").observe(0.2)
    text = generate_latest(registry).decode()
    # Creation times differ between the two registries; everything else must not.
    return re.sub(r"^\w+_created\{.*\n", "", text, flags=re.M)


def test_exposition_is_prometheus_clients() -> None:
    ours = _exposition(LoopCounter, LoopGauge, LoopHistogram)
    theirs = _exposition(Counter, Gauge, Histogram)
    assert ours == theirs
    assert 'h_bucket{le="0.1",stage="a"} 3.0' in ours  # 0.0, 0.1 and -2.0: bounds are <=


def test_nan_is_in_the_sum_and_no_bucket() -> None:
    h = LoopHistogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    h.observe(float("nan"))
    h.observe(0.5)
    samples = {(s.name, s.labels.get("le")): s.value for s in next(iter(h.collect())).samples}
    assert samples[("h_count", None)] == 1
    assert samples[("h_bucket", "+Inf")] == 1
    assert math.isnan(samples[("h_sum", None)])


def test_counter_refuses_a_negative_amount() -> None:
    c = LoopCounter("c", "c", registry=CollectorRegistry())
    with pytest.raises(ValueError, match="non-negative"):
        c.inc(-1)
    assert c._value.get() == 0


@pytest.mark.parametrize("kind", ["counter", "histogram"])
def test_an_exemplar_is_refused_not_dropped(kind: str) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="exemplar"):
        if kind == "counter":
            LoopCounter("c", "c", registry=registry).inc(1, exemplar={"trace_id": "1"})
        else:
            LoopHistogram("h", "h", registry=registry).observe(1, exemplar={"trace_id": "1"})


def test_a_labelled_parent_is_not_observable() -> None:
    registry = CollectorRegistry()
    parents: list[Callable[[], None]] = [
        lambda: LoopCounter("c", "c", ["stage"], registry=registry).inc(),
        lambda: LoopGauge("g", "g", ["stage"], registry=registry).set(1),
        lambda: LoopHistogram("h", "h", ["stage"], registry=registry).observe(1),
    ]
    for update in parents:
        with pytest.raises(ValueError, match="labels"):
            update()


def test_a_counters_value_is_what_a_scrape_reports() -> None:
    registry = CollectorRegistry()
    child = LoopCounter("c", "c", ["stage"], registry=registry).labels("summary")
    child.inc(3)
    child.inc(0.5)
    assert child.value == 3.5
    assert registry.get_sample_value("c_total", {"stage": "summary"}) == child.value
    with pytest.raises(ValueError, match="labels"):
        _ = LoopCounter("p", "p", ["stage"], registry=registry).value
