"""Stage graphs in the worker: routing by `when:`, chaining by `input_from:` (acceptance).

A real broker, the LLM simulator over HTTP, the worker in-process (so the test reads
its metrics and what the simulator received) or as a process (kill -9).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import ConsumerRecord

from streamsynth.config import Settings, settings_from_dict
from streamsynth.engine import (
    DocumentBatch,
    GraphNode,
    Output,
    Pipeline,
    RecordOutcome,
    StageGraph,
)
from streamsynth.engine import evaluate as evaluate_graph
from streamsynth.kafka.dlq import header_map
from streamsynth.kafka.routing import Router
from streamsynth.kafka.worker import Worker
from streamsynth.llm.factory import build_llm_client
from streamsynth.local.llm_simulator import LLMSimulator
from streamsynth.metrics.registry import Metrics
from streamsynth.stages.factory import build_stages
from streamsynth.testing.harness import (
    Received,
    TopicReader,
    Topics,
    WorkerProcess,
    committed,
    custom_stage,
    doc,
    produce,
    worker_config,
)

pytestmark = pytest.mark.integration

HIGH = ("diverse_qa", "distill", "extract_knowledge", "knowledge_list")
LOW = "wikipedia_paraphrasing"
STAGE_HEADER = "streamsynth.error.stage"
TEXT = (
    "Glaciers form where snow accumulates faster than it melts, compacting into dense ice "
    "over many years. As the ice thickens it begins to flow under its own weight, carving "
    "valleys, moving boulders and leaving moraines behind when it finally retreats. Document {i}."
)


def recipe_stages(topics: Topics) -> list[dict[str, Any]]:
    """The stages of the shipped nemotron-cc recipe, on this test's topics."""
    text = resources.files("streamsynth").joinpath("data/recipes/nemotron-cc.yaml").read_text()
    stages: list[dict[str, Any]] = yaml.safe_load(text)["stages"]
    for stage in stages:
        stage["output_topic"] = topics.outputs[stage["task"]]
    return stages


def settings_of(cfg: dict[str, Any]) -> Settings:
    cfg = {**cfg, "metrics": {"enabled": False}}
    return settings_from_dict(cfg)


async def wait_until(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def commits_reach_end(bootstrap: str, topics: Topics, total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await committed(bootstrap, topics.group, topics.input, 4)
        if sum(got.values()) == total:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"commits {got} never reached {total} records")
        await asyncio.sleep(0.2)


def ends_by_branch(reader: TopicReader, topics: Topics) -> dict[tuple[str, str], list[str]]:
    """(document id, stage) -> how each of its rows ended: output, filtered or dlq."""
    ends: dict[tuple[str, str], list[str]] = defaultdict(list)
    for stage, topic in topics.outputs.items():
        for rec in reader.records[topic]:
            ends[(rec.json()["id"], stage)].append("output")
    if topics.filtered:
        for rec in reader.records[topics.filtered]:
            body = rec.json()
            ends[(body["id"], body["streamsynth"]["stage"])].append("filtered")
    for rec in reader.records[topics.dlq]:
        ends[(rec.json()["id"], rec.headers[STAGE_HEADER])].append("dlq")
    return ends


def skipped(metrics: Metrics, stage: str) -> float:
    return float(metrics.records_skipped.labels(stage)._value.get())


async def run_in_process(settings: Settings, metrics: Metrics) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(settings, metrics=metrics)
    return worker, asyncio.get_running_loop().create_task(worker.run())


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.request_stop()
    await asyncio.wait_for(task, 30)


# -- routing: the Nemotron-CC recipe ------------------------------------------------------------
async def test_recipe_routes_a_thousand_documents_by_quality(
    kafka_bootstrap: str, llm_sim: LLMSimulator
) -> None:
    topics = Topics.make([*HIGH, LOW], filtered=True)
    await topics.create(kafka_bootstrap)
    n = 1000
    quality = {f"doc-{i}": i % 21 for i in range(n)}  # bucketed_results 0..20
    await produce(
        kafka_bootstrap,
        topics.input,
        [doc(i, TEXT.format(i=i), bucketed_results=i % 21) for i in range(n)],
    )
    cfg = worker_config(kafka_bootstrap, topics, llm_sim.base_url, recipe_stages(topics))
    metrics = Metrics()
    worker, task = await run_in_process(settings_of(cfg), metrics)
    high = {d for d, q in quality.items() if q > 11}
    low = set(quality) - high
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:

            def every_branch_ended(r: TopicReader) -> bool:
                ends = ends_by_branch(r, topics)
                return all((d, s) in ends for d in high for s in HIGH) and all(
                    (d, LOW) in ends for d in low
                )

            await reader.until(every_branch_ended, 180, "every routed branch")
            await commits_reach_end(kafka_bootstrap, topics, n, 30)
            await reader.settle(quiet_s=0.5)
    finally:
        await stop(worker, task)
    ends = ends_by_branch(reader, topics)
    for (doc_id, stage), how in ends.items():
        # High-quality documents only in the four tasks, the others only in paraphrasing.
        assert (stage in HIGH) == (doc_id in high), (doc_id, stage, how)
    assert {d for d, s in ends if s == LOW} == low
    for stage in HIGH:
        assert {d for d, s in ends if s == stage} == high
    # Skipped = the documents routed elsewhere, exactly; skipping is no DLQ entry.
    assert skipped(metrics, LOW) == len(high)
    for stage in HIGH:
        assert skipped(metrics, stage) == len(low)
    assert reader.records[topics.dlq] == []
    published = {s: len(reader.records[topics.outputs[s]]) for s in (*HIGH, LOW)}
    assert all(published.values()), published  # every task published something
    print(f"recipe: {len(high)} high, {len(low)} low; published {published}")


# -- chaining --------------------------------------------------------------------------------
def chain_stages(topics: Topics) -> list[dict[str, Any]]:
    gen = custom_stage("gen", topics.outputs["gen"], prompt="Write a note about:\n\n{document}")
    gen["generation"] = {"max_tokens": 24}
    # The upstream answer sits inside a simulator marker: an upstream answer "500" makes
    # the judge's request fail (HTTP 500 on every attempt); any other answer is ignored.
    judge = custom_stage("judge", topics.outputs["judge"], prompt="Grade: [[sim:{document}]]")
    judge["input_from"] = "gen"
    return [gen, judge]


async def test_chain_prompt_holds_upstream_output_parent_named_fault_dead_letters_branch(
    kafka_bootstrap: str, llm_sim: LLMSimulator
) -> None:
    topics = Topics.make(["gen", "judge"])
    await topics.create(kafka_bootstrap)
    n = 60
    faulty = {f"doc-{i}" for i in range(0, n, 10)}
    docs = [
        doc(i, "[[sim:reply=500]]" if f"doc-{i}" in faulty else f"rivers and deltas {i}")
        for i in range(n)
    ]
    await produce(kafka_bootstrap, topics.input, docs)
    cfg = worker_config(
        kafka_bootstrap, topics, llm_sim.base_url, chain_stages(topics), llm__max_attempts=2
    )
    metrics = Metrics()
    worker, task = await run_in_process(settings_of(cfg), metrics)
    gen_topic, judge_topic = topics.outputs["gen"], topics.outputs["judge"]
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: (
                    len(r.records[gen_topic]) >= n
                    and len(r.records[judge_topic]) + len(r.records[topics.dlq]) >= n
                ),
                60,
                "both stages of every document",
            )
            await commits_reach_end(kafka_bootstrap, topics, n, 30)
            await reader.settle(quiet_s=0.5)
    finally:
        await stop(worker, task)
    gens = {rec.json()["id"]: rec.json() for rec in reader.records[gen_topic]}
    judges = {rec.json()["id"]: rec.json() for rec in reader.records[judge_topic]}
    # The upstream outputs are published for every document, the faulty ones too.
    assert set(gens) == {f"doc-{i}" for i in range(n)}
    assert set(judges) == set(gens) - faulty
    dlq: list[Received] = reader.records[topics.dlq]
    assert sorted(r.json()["id"] for r in dlq) == sorted(faulty)
    assert {r.headers[STAGE_HEADER] for r in dlq} == {"judge"}  # only that branch
    for letter in dlq:  # and which upstream output the failed branch started from
        upstream_meta = gens[letter.json()["id"]]["streamsynth"]
        assert letter.headers["streamsynth.error.parent_stage"] == "gen"
        assert letter.headers["streamsynth.error.parent_id"] == upstream_meta["output_id"]
    judge_prompts = [
        req["messages"][-1]["content"]
        for req in llm_sim.last_requests
        if req["messages"][-1]["content"].startswith("Grade: ")
    ]
    for doc_id, body in judges.items():
        upstream = gens[doc_id]
        # The chained stage read the upstream's output field and published beside it.
        assert body["gen"] == upstream["gen"] and body["judge"]
        assert f"Grade: [[sim:{upstream['gen']}]]" in judge_prompts
        meta = body["streamsynth"]
        assert meta["stage"] == "judge"
        assert meta["parent"]["stage"] == "gen"
        assert meta["parent"]["id"] == upstream["streamsynth"]["output_id"]
        assert meta["source"] == upstream["streamsynth"]["source"]
    assert "parent" not in next(iter(gens.values()))["streamsynth"]


async def test_chained_when_gates_on_the_upstream_row(
    kafka_bootstrap: str, llm_sim: LLMSimulator
) -> None:
    topics = Topics.make(["gen", "judge"])
    await topics.create(kafka_bootstrap)
    n = 40
    await produce(
        kafka_bootstrap,
        topics.input,
        [doc(i, f"topic {i}", lang="en" if i % 4 else "fr") for i in range(n)],
    )
    stages = chain_stages(topics)
    stages[1]["when"] = {"lang": {"eq": "en"}}  # a field of the input, carried on the upstream row
    cfg = worker_config(kafka_bootstrap, topics, llm_sim.base_url, stages)
    metrics = Metrics()
    worker, task = await run_in_process(settings_of(cfg), metrics)
    english = {f"doc-{i}" for i in range(n) if i % 4}
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: (
                    len(r.records[topics.outputs["gen"]]) >= n
                    and len(r.records[topics.outputs["judge"]]) >= len(english)
                ),
                60,
                "outputs",
            )
            await commits_reach_end(kafka_bootstrap, topics, n, 30)
            await reader.settle(quiet_s=0.5)
    finally:
        await stop(worker, task)
    assert set(reader.ids(topics.outputs["judge"])) == english
    assert len(reader.records[topics.outputs["judge"]]) == len(english)
    assert skipped(metrics, "judge") == n - len(english)
    assert skipped(metrics, "gen") == 0
    assert reader.records[topics.dlq] == []


# -- kill -9 during a chained run ------------------------------------------------------------
async def test_kill_9_during_a_chained_run_loses_no_branch(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["gen", "judge"])
    await topics.create(kafka_bootstrap)
    n = 600
    # 50 ms per request in both stages keeps records in flight, in either stage, at the kill.
    docs = [
        doc(i, f"[[sim:latency=0.05]] item {i}", route="skip" if i % 5 == 0 else "judge")
        for i in range(n)
    ]
    await produce(kafka_bootstrap, topics.input, docs)
    gen = custom_stage("gen", topics.outputs["gen"], prompt="Note:\n\n{document}")
    judge = custom_stage("judge", topics.outputs["judge"], prompt="[[sim:latency=0.05]] {document}")
    judge.update(input_from="gen", when={"route": {"eq": "judge"}})
    cfg = worker_config(
        kafka_bootstrap, topics, sim_url, [gen, judge], kafka__group_instance_id="chain-kill-0"
    )
    judged = {f"doc-{i}" for i in range(n) if i % 5}
    async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
        first = WorkerProcess(cfg, tmp_path, name="chain-0").start()
        try:
            await reader.until(
                lambda r: len(r.records[topics.outputs["judge"]]) >= 100, 60, "a first part"
            )
            first.kill()
        finally:
            first.stop()
        at_kill = sum((await committed(kafka_bootstrap, topics.group, topics.input, 4)).values())
        final = WorkerProcess(cfg, tmp_path, name="chain-1").start()
        try:
            await reader.until(
                lambda r: (
                    set(r.ids(topics.outputs["gen"])) | set(r.ids(topics.dlq))
                    >= {f"doc-{i}" for i in range(n)}
                    and set(r.ids(topics.outputs["judge"])) | set(r.ids(topics.dlq)) >= judged
                ),
                120,
                "every branch",
            )
            await commits_reach_end(kafka_bootstrap, topics, n, 30)
            final.signal(signal.SIGTERM)
            assert final.wait(15) == 0
        finally:
            final.stop()
        await reader.settle(quiet_s=0.5)
    assert at_kill < n  # the kill was mid-stream
    ends = ends_by_branch(reader, topics)
    for i in range(n):
        doc_id = f"doc-{i}"
        assert (doc_id, "gen") in ends, doc_id
        if doc_id in judged:
            assert (doc_id, "judge") in ends, doc_id
        else:
            assert (doc_id, "judge") not in ends, doc_id  # skipped: published nowhere
    # A redelivered record runs its whole graph again: the chained output names the same
    # upstream output id each time (ids are deterministic), so duplicates are detectable.
    parents = defaultdict(set)
    for rec in reader.records[topics.outputs["judge"]]:
        body = rec.json()
        parents[body["id"]].add(body["streamsynth"]["parent"]["id"])
    assert all(len(ids) == 1 for ids in parents.values())


# -- the batch Pipeline gives the worker's rows ------------------------------------------------
def _row_view(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row without streamsynth's metadata and the batch API's bookkeeping columns."""
    return tuple(
        sorted((k, v) for k, v in row.items() if k != "streamsynth" and not k.startswith("_"))
    )


async def test_engine_pipeline_gives_the_workers_rows_for_the_same_graph(
    kafka_bootstrap: str, llm_sim: LLMSimulator
) -> None:
    topics = Topics.make(["distill", "qa", "wiki"], filtered=True)
    await topics.create(kafka_bootstrap)
    stages: list[dict[str, Any]] = [
        {"task": "distill", "name": "distill", "output_topic": topics.outputs["distill"],
         "when": {"bucketed_results": {"gt": 11}}},
        {"task": "diverse_qa", "name": "qa", "output_topic": topics.outputs["qa"],
         "input_from": "distill"},
        {"task": "wikipedia_paraphrasing", "name": "wiki", "output_topic": topics.outputs["wiki"],
         "when": {"bucketed_results": {"lte": 11}}},
    ]  # fmt: skip
    n = 40
    records: list[dict[str, Any]] = [
        {"id": f"doc-{i}", "text": "\n".join([TEXT.format(i=i)] * 3), "bucketed_results": i % 21}
        for i in range(n)
    ]
    await produce(
        kafka_bootstrap, topics.input, [(r["id"].encode(), orjson.dumps(r)) for r in records]
    )
    cfg = worker_config(kafka_bootstrap, topics, llm_sim.base_url, stages)
    settings = settings_of(cfg)
    worker, task = await run_in_process(settings, Metrics())
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await commits_reach_end(kafka_bootstrap, topics, n, 60)
            await reader.settle(quiet_s=0.5)
    finally:
        await stop(worker, task)
    from_worker = {
        name: sorted(_row_view(r.json()) for r in reader.records[topic])
        for name, topic in topics.outputs.items()
    }
    # The same stages, built the worker's way, in a batch Pipeline with the same graph.
    client = build_llm_client(settings.llm)
    try:
        built = build_stages(settings, client)
        pipe = Pipeline(
            [spec.stage for spec in built],
            when={s.stage_name: s.when for s in settings.stages if s.when},
            input_from={
                s.stage_name: s.input_from for s in settings.stages if isinstance(s.input_from, str)
            },
        )
        by_stage = await pipe.aprocess_by_stage(DocumentBatch.from_records(records))
    finally:
        await client.aclose()
    from_pipeline = {
        name: sorted(_row_view(row) for row in out.to_records() if row.get("_error") is None)
        for name, out in by_stage.items()
    }
    assert from_pipeline == from_worker
    assert all(from_worker.values()), {k: len(v) for k, v in from_worker.items()}
    assert pipe.skipped["distill"] == sum(1 for r in records if r["bucketed_results"] <= 11)


# -- routing a graph's runs, without a broker ------------------------------------------------
def test_route_graph_publishes_upstream_first_names_parents_and_skips_nothing_published() -> None:
    @dataclass
    class Spec:
        name: str
        topic: str
        segmented: bool = False
        prompt_sha256: str | None = "p"

    graph = StageGraph.build(
        [
            GraphNode("split"),
            GraphNode("tag", input_from="split", when={"part": {"ne": "b"}}),
            GraphNode("judge", input_from="tag"),
        ]
    )

    async def run(stage: str, row: Any) -> RecordOutcome:
        if stage == "split":
            return RecordOutcome(
                outputs=[
                    Output({**row, "part": p, "segment_index": i}) for i, p in enumerate("abc")
                ]
            )
        if stage == "judge" and row["part"] == "c":
            return RecordOutcome(error=RuntimeError("judge down"))
        return RecordOutcome(outputs=[Output({**row, stage: row["part"].upper()})])

    doc_ = {"id": "d1", "text": "t"}
    msg: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "in", 0, 7, 0, 0, b"d1", orjson.dumps(doc_), None, 2, 10, []
    )  # fmt: skip
    runs = asyncio.run(evaluate_graph(graph, doc_, run))
    specs = {n: Spec(n, f"out.{n}", segmented=n == "split") for n in graph.order}
    routed = Router(dlq_topic="dlq", filtered_topic=None, id_field="id").route_graph(
        msg, doc_, runs, specs
    )
    assert routed.skipped == ["tag"]  # part "b": finished for tag, and so judge never saw it
    by_topic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    letters = []
    for pub in routed.publications:
        if pub.kind == "dlq":
            letters.append(header_map(pub.out.headers or []))
        else:
            assert pub.out.value is not None
            by_topic[pub.out.topic].append(orjson.loads(pub.out.value))
    splits = {b["part"]: b["streamsynth"] for b in by_topic["out.split"]}
    tags = {b["part"]: b["streamsynth"] for b in by_topic["out.tag"]}
    assert set(splits) == {"a", "b", "c"} and set(tags) == {"a", "c"}
    for part, meta in tags.items():
        assert meta["parent"] == {"stage": "split", "id": splits[part]["output_id"]}
    [judged] = by_topic["out.judge"]
    assert judged["streamsynth"]["parent"] == {"stage": "tag", "id": tags["a"]["output_id"]}
    # Distinct ids for the rows of one stage (the parent enters the id).
    assert len({m["output_id"] for m in tags.values()}) == 2
    [letter] = letters
    assert letter["streamsynth.error.stage"] == "judge"
    assert letter["streamsynth.error.parent_id"] == tags["c"]["output_id"]
