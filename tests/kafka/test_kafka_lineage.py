"""Issue #16 acceptance through the worker process: stable output ids across consumer
groups, structured answers and the context guard end to end (real broker, simulator)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import (
    Received,
    TopicReader,
    Topics,
    WorkerProcess,
    doc,
    produce,
    unique,
    worker_config,
)

from streamsynth.kafka.records import validate_output
from streamsynth.local.broker import create_topics
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess

pytestmark = pytest.mark.integration

E = "streamsynth.error."
STAGES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    """This file's own simulator: its request counts belong to these tests only."""
    config = SimulatorConfig(
        models=["sim-model", "sim-model-b"],
        latency=LatencyModel(kind="uniform", low_s=0.001, high_s=0.004),
    )
    with SimulatorProcess(config) as process:
        yield process


def stage(name: str, topic: str, **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "custom",
        "name": name,
        "prompt": f"Stage {name}: summarize\n\n{{document}}",
        "output_field": name,
        "output_topic": topic,
        "generation": {"max_tokens": 16, "temperature": 0.0},
    }
    cfg.update(changes)
    return cfg


async def run_group(
    bootstrap: str,
    url: str,
    tmp_path: Path,
    input_topic: str,
    n: int,
    stages: list[dict[str, Any]],
    name: str,
    **overrides: Any,
) -> dict[str, list[Received]]:
    """One worker in a fresh group over ``input_topic``; returns its outputs by stage."""
    topics = Topics.make([s["name"] for s in stages])
    topics.input = input_topic
    for s in stages:
        s["output_topic"] = topics.outputs[s["name"]]
    await create_topics(bootstrap, {t: 2 for t in topics.all_outputs()})
    cfg = worker_config(bootstrap, topics, url, stages, **overrides)
    worker = WorkerProcess(cfg, tmp_path, name=name).start()
    try:
        async with TopicReader(bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: all(len(r.records[t]) >= n for t in topics.outputs.values()),
                120,
                f"{n} outputs per stage ({name})",
            )
            await reader.settle(quiet_s=0.5, max_s=5)
    finally:
        worker.stop()
    return {name: reader.records[topic] for name, topic in topics.outputs.items()}


def ids_by_stage(published: dict[str, list[Received]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, records in published.items():
        out[name] = []
        for rec in records:
            assert rec.value is not None
            validate_output(rec.value)  # every output of these tests obeys the schema
            body = rec.json()
            assert rec.key == body["id"].encode()  # the key stays the document id
            out[name].append(body["streamsynth"]["output_id"])
    return out


async def test_output_ids_are_stable_across_groups_and_change_only_with_their_stage(
    kafka_bootstrap: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    n = 500
    source = unique("lineage.in")
    await create_topics(kafka_bootstrap, {source: 4})
    await produce(kafka_bootstrap, source, (doc(i) for i in range(n)))
    base = [stage(name, "") for name in STAGES]
    first = ids_by_stage(
        await run_group(kafka_bootstrap, sim.base_url, tmp_path, source, n, base, "g1")
    )
    second = ids_by_stage(
        await run_group(
            kafka_bootstrap, sim.base_url, tmp_path, source, n, copy.deepcopy(base), "g2"
        )
    )
    for name in STAGES:
        assert len(set(first[name])) == n  # one id per document and stage
        assert set(first[name]) == set(second[name])  # any worker, any group: the same ids
    variant = copy.deepcopy(base)
    variant[0]["prompt"] = "Stage a, reworded: summarize\n\n{document}"
    variant[1]["generation"]["temperature"] = 0.7
    variant[2]["model"] = "sim-model-b"
    third = ids_by_stage(
        await run_group(kafka_bootstrap, sim.base_url, tmp_path, source, n, variant, "g3")
    )
    for name in ("a", "b", "c"):
        assert not set(third[name]) & set(first[name]), name  # every id of that stage changed
        assert len(set(third[name])) == n
    assert set(third["d"]) == set(first["d"])  # and nothing else


SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["title", "score"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA, "strict": True}}


async def test_structured_stage_publishes_json_and_dead_letters_invalid_output(
    kafka_bootstrap: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    topics = Topics.make(["card"])
    await topics.create(kafka_bootstrap, partitions=2)
    docs = [
        doc(0, "a plain document"),
        doc(1, "a document [[sim:json=invalid_then_valid]]"),
        doc(2, "a document [[sim:json=invalid]]"),
    ]
    await produce(kafka_bootstrap, topics.input, docs)
    card = stage("card", topics.outputs["card"], response_format=FORMAT, parse_retries=2)
    cfg = worker_config(kafka_bootstrap, topics, sim.base_url, [card])
    sim.reset_stats()
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: (
                    len(r.records[topics.outputs["card"]]) >= 2 and len(r.records[topics.dlq]) >= 1
                ),
                60,
                "two cards and one dead letter",
            )
            await reader.settle(quiet_s=0.5, max_s=5)
    finally:
        worker.stop()
    outputs = {r.json()["id"]: r for r in reader.records[topics.outputs["card"]]}
    assert set(outputs) == {"doc-0", "doc-1"}
    for rec in outputs.values():
        assert rec.value is not None
        validate_output(rec.value)
        body = rec.json()
        assert isinstance(body["card"], dict) and set(body["card"]) == {"title", "score"}
        assert body["streamsynth"]["generation"]["response_format"] == FORMAT
    assert outputs["doc-1"].json()["streamsynth"]["attempts"] == 2  # one re-ask
    [dead] = reader.records[topics.dlq]
    assert dead.key == b"doc-2"
    assert dead.headers[E + "reason"] == "invalid_output"
    assert "not valid JSON" in dead.headers[E + "message"]
    assert dead.headers[E + "attempts"] == "3"  # 1 + parse_retries
    # 1 (doc-0) + 2 (doc-1) + 3 (doc-2) requests, and the format reached the server unchanged.
    assert sim.stats().requests == 6


def words(n: int) -> str:
    vocabulary = ("river", "stone", "light", "market", "signal", "garden", "winter")
    return " ".join(vocabulary[i % 7] for i in range(n))


async def test_context_guard_dead_letters_an_overlong_document_unsent(
    kafka_bootstrap: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=1)
    summary = stage("summary", topics.outputs["summary"], min_output_tokens=64)
    summary["generation"]["max_tokens"] = 512
    # "Stage summary: summarize\n\n" is 4 approx tokens, plus 4 per message and 3 per request.
    overhead = 4 + 4 + 3
    just_under = 4096 - overhead - 100  # leaves 100 answer tokens: shrunk from 512
    await produce(
        kafka_bootstrap,
        topics.input,
        [doc(0, words(50_000)), doc(1, words(just_under))],
    )
    cfg = worker_config(kafka_bootstrap, topics, sim.base_url, [summary], llm__context_tokens=4096)
    cfg["record"] = {"max_record_bytes": 4 * 1024 * 1024}
    sim.reset_stats()
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: (
                    len(r.records[topics.outputs["summary"]]) >= 1
                    and len(r.records[topics.dlq]) >= 1
                ),
                60,
                "one summary and one dead letter",
            )
            await reader.settle(quiet_s=0.5, max_s=5)
    finally:
        worker.stop()
    [dead] = reader.records[topics.dlq]
    assert dead.key == b"doc-0"
    assert dead.headers[E + "reason"] == "context_length"
    assert dead.headers[E + "attempts"] == "0"
    [out] = reader.records[topics.outputs["summary"]]
    assert out.value is not None
    validate_output(out.value)
    assert out.json()["streamsynth"]["generation"]["max_tokens"] == 100
    assert sim.stats().requests == 1  # the 50,000-token document was never sent


async def test_a_redone_document_is_answered_from_the_cache_with_the_same_output_id(
    kafka_bootstrap: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    n = 50
    source = unique("lineage.cache.in")
    await create_topics(kafka_bootstrap, {source: 2})
    await produce(kafka_bootstrap, source, (doc(i) for i in range(n)))
    cache = {"kind": "sqlite", "path": str(tmp_path / "cache.sqlite3"), "max_entries": 1000}
    stages = [stage("a", "")]
    sim.reset_stats()
    first = await run_group(
        kafka_bootstrap, sim.base_url, tmp_path, source, n, stages, "c1", llm__cache=cache
    )
    assert sim.stats().requests == n
    sim.reset_stats()
    again = await run_group(
        kafka_bootstrap, sim.base_url, tmp_path, source, n, copy.deepcopy(stages), "c2",
        llm__cache=cache,
    )  # fmt: skip
    assert sim.stats().requests == 0  # every answer came from the cache: free
    assert set(ids_by_stage(first)["a"]) == set(ids_by_stage(again)["a"])
    metas = [r.json()["streamsynth"] for r in again["a"]]
    assert all(m["cached"] and m["attempts"] == 0 for m in metas)
    assert all(m["endpoint"] == sim.base_url for m in metas)  # kept from the first answer
