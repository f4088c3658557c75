"""The worker as a subprocess against a real broker and the LLM simulator (acceptance).

Every wait is bounded by time; timeouts are small (session 6 s, drain 3 s,
shutdown 5 s, simulator 2-10 ms per request) so the file runs in a few minutes.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka_helpers import (
    TopicReader,
    Topics,
    WorkerProcess,
    committed,
    custom_stage,
    doc,
    produce,
    worker_config,
)

from streamsynth.local.broker import EmbeddedBroker, MotoS3Server
from streamsynth.local.llm_simulator import (
    FaultConfig,
    LatencyModel,
    SimulatorConfig,
    SimulatorProcess,
)

pytestmark = pytest.mark.integration

E = "streamsynth.error."
LLM_ERROR_CLASSES = {
    "BadRequestError",
    "RateLimitError",
    "ServerError",
    "LLMTimeoutError",
    "MalformedResponseError",
    "EmptyChoicesError",
    "DeadlineExceededError",
}


def wait_for_log(worker: WorkerProcess, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{worker.name} never logged {text!r}")
        time.sleep(0.1)


def count_outputs(reader: TopicReader, topic: str) -> int:
    return len(reader.records[topic])


async def wait_for_outputs(reader: TopicReader, topic: str, n: int, timeout_s: float) -> None:
    await reader.until(lambda r: count_outputs(r, topic) >= n, timeout_s, f"{n} records in {topic}")


def source_coords(reader: TopicReader, topic: str) -> list[tuple[int, int]]:
    out = []
    for rec in reader.records[topic]:
        src = rec.json()["streamsynth"]["source"]
        out.append((src["partition"], src["offset"]))
    return out


async def assert_commits_reach_end(
    bootstrap: str, topics: Topics, expected_per_partition: dict[int, int], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await committed(bootstrap, topics.group, topics.input, len(expected_per_partition))
        if got == expected_per_partition:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"commits {got} never reached {expected_per_partition}")
        await asyncio.sleep(0.2)


async def partition_ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Records per partition of ``topic`` (= the offset a finished group commits)."""
    async with TopicReader(bootstrap, [topic]) as reader:
        await reader.settle(quiet_s=0.5, max_s=10)
        ends = {p: 0 for p in range(partitions)}
        for rec in reader.records[topic]:
            ends[rec.partition] = max(ends[rec.partition], rec.offset + 1)
        return ends


# -- 1,000 documents end to end ------------------------------------------------------------
async def test_thousand_documents_through_nemotron_task_and_custom_stage(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["wikipedia_paraphrasing", "summary"], filtered=True)
    await topics.create(kafka_bootstrap)
    n = 1000
    text = "The quick brown fox jumps over the lazy dog near the river bank at dawn {i}."
    await produce(kafka_bootstrap, topics.input, [doc(i, text.format(i=i)) for i in range(n)])
    stages = [
        {
            "task": "wikipedia_paraphrasing",
            "output_topic": topics.outputs["wikipedia_paraphrasing"],
        },
        custom_stage("summary", topics.outputs["summary"]),
    ]
    cfg = worker_config(kafka_bootstrap, topics, sim_url, stages)
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            para, summ = topics.outputs["wikipedia_paraphrasing"], topics.outputs["summary"]
            assert topics.filtered is not None
            filtered_topic = topics.filtered

            def done(r: TopicReader) -> bool:
                para_ids = set(r.ids(para)) | {
                    i
                    for i, rec in zip(r.ids(filtered_topic), r.records[filtered_topic], strict=True)
                    if rec.json()["streamsynth"]["stage"] == "wikipedia_paraphrasing"
                }
                return len(set(r.ids(summ))) >= n and len(para_ids) >= n

            await reader.until(done, 120, "1000 documents in both stages")
            await reader.settle(quiet_s=0.5)
            ids = {f"doc-{i}" for i in range(n)}
            assert set(reader.ids(summ)) == ids
            assert len(reader.ids(summ)) == n  # one output per document per stage
            assert set(reader.ids(para)) <= ids
            assert reader.records[topics.dlq] == []
            sample = reader.records[summ][0]
            body = sample.json()
            assert sample.key == body["id"].encode()  # key = the input key
            assert body["text"].startswith("The quick brown fox")
            assert body["summary"]
            meta = body["streamsynth"]
            assert meta["stage"] == "summary" and meta["model"] == "sim-model"
            assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0
            assert meta["attempts"] >= 1 and meta["finish_reason"] in ("stop", "length")
            assert meta["source"]["topic"] == topics.input
            print(
                f"paraphrase: {len(reader.records[para])} published, "
                f"{len(reader.records[filtered_topic])} filtered"
            )
            assert reader.records[para], "the Nemotron-CC task published nothing"
            pmeta = reader.records[para][0].json()
            assert pmeta["rephrased"]
            assert pmeta["streamsynth"]["stage"] == "wikipedia_paraphrasing"
        ends = await partition_ends(kafka_bootstrap, topics.input, 4)
        await assert_commits_reach_end(kafka_bootstrap, topics, ends, 10)
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        worker.stop()


async def test_segment_task_publishes_one_record_per_kept_segment(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["extract_knowledge"], filtered=True)
    await topics.create(kafka_bootstrap)
    n = 30
    line = "Volcanic islands form where magma rises through the ocean crust over millions of years."
    text = "\n".join(f"{line} Paragraph {k}." for k in range(200))  # several segments
    await produce(kafka_bootstrap, topics.input, [doc(i, text) for i in range(n)])
    stages = [{"task": "extract_knowledge", "output_topic": topics.outputs["extract_knowledge"]}]
    worker = WorkerProcess(worker_config(kafka_bootstrap, topics, sim_url, stages), tmp_path)
    worker.start()
    out = topics.outputs["extract_knowledge"]
    assert topics.filtered is not None
    filtered = topics.filtered
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(
                lambda r: len(set(r.ids(out)) | set(r.ids(filtered)) | set(r.ids(topics.dlq))) >= n,
                60,
                "every document",
            )
            await reader.settle(quiet_s=0.5)
    finally:
        worker.stop()
    assert reader.records[out], "nothing published"
    per_doc: dict[str, list[int]] = {}
    for rec in reader.records[out]:
        body = rec.json()
        per_doc.setdefault(body["id"], []).append(body["streamsynth"]["segment"])
        assert rec.key == body["id"].encode()
    # Several kept segments per document, each published once with its own index.
    assert max(len(v) for v in per_doc.values()) > 1
    for segments in per_doc.values():
        assert len(segments) == len(set(segments))


# -- kill -9 ----------------------------------------------------------------------------------
async def run_kill_cycles(
    bootstrap: str, sim_url: str, tmp_path: Path, cycles: int, seed: int
) -> None:
    rng = random.Random(seed)
    topics = Topics.make(["summary"])
    await topics.create(bootstrap)
    n = 400 * cycles + 400
    # 100 ms per request (64 at a time) keeps records in flight at every kill.
    text = "[[sim:latency=0.1]] record {i} for the crash test"
    await produce(bootstrap, topics.input, [doc(i, text.format(i=i)) for i in range(n)])
    cfg = worker_config(
        bootstrap,
        topics,
        sim_url,
        [custom_stage("summary", topics.outputs["summary"])],
        kafka__group_instance_id="crash-test-0",  # static membership: no wait for the dead one
    )
    out_topic = topics.outputs["summary"]
    commits_at_kills: list[dict[int, int]] = []
    async with TopicReader(bootstrap, topics.all_outputs()) as reader:
        for cycle in range(cycles):
            worker = WorkerProcess(cfg, tmp_path, name=f"worker-{cycle}").start()
            try:
                before = count_outputs(reader, out_topic)
                # A random moment mid-stream: after a random number of new outputs.
                await wait_for_outputs(reader, out_topic, before + rng.randint(30, 300), 60)
                await asyncio.sleep(rng.random() * 0.3)
                worker.kill()
            finally:
                worker.stop()
            commits_at_kills.append(await committed(bootstrap, topics.group, topics.input, 4))
        final = WorkerProcess(cfg, tmp_path, name="worker-final").start()
        try:
            await reader.until(
                lambda r: len(set(r.ids(out_topic)) | set(r.ids(topics.dlq))) >= n, 120, "all"
            )
            await asyncio.to_thread(wait_for_log, final, "partitions assigned", 30)
            final.signal(signal.SIGTERM)
            assert final.wait(15) == 0
        finally:
            final.stop()
        await reader.settle(quiet_s=0.5)
    ids = {f"doc-{i}" for i in range(n)}
    assert set(reader.ids(out_topic)) | set(reader.ids(topics.dlq)) == ids  # nothing lost
    # Duplicates only from records uncommitted (in flight) at a kill: each kill can add at
    # most one extra copy, and only of a record at or past that kill's committed offset.
    copies = Counter(source_coords(reader, out_topic))
    for (partition, offset), count in copies.items():
        exposed = sum(1 for c in commits_at_kills if offset >= c[partition])
        assert count <= 1 + exposed, (partition, offset, count, exposed)
    duplicates = sum(c - 1 for c in copies.values())
    assert duplicates <= cycles * 200 * 2
    # Every kill was mid-stream: the last one left work for the final worker.
    assert sum(commits_at_kills[-1].values()) < n
    print(
        f"kill cycles: commits at kills {[sum(c.values()) for c in commits_at_kills]}, "
        f"{duplicates} duplicates of {n}"
    )


async def test_kill_9_five_cycles_lose_nothing(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    await run_kill_cycles(kafka_bootstrap, sim_url, tmp_path, cycles=5, seed=1)


@pytest.mark.slow
async def test_kill_9_many_cycles_lose_nothing(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    await run_kill_cycles(kafka_bootstrap, sim_url, tmp_path, cycles=25, seed=2)


# -- SIGTERM ----------------------------------------------------------------------------------
async def test_sigterm_mid_stream_loses_and_duplicates_nothing(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap)
    n = 1500
    # 100 ms per request, 64 in flight: ~640 records/s, so 300 outputs is surely mid-stream.
    text = "[[sim:latency=0.1]] record {i} for the sigterm test"
    await produce(kafka_bootstrap, topics.input, [doc(i, text.format(i=i)) for i in range(n)])
    cfg = worker_config(
        kafka_bootstrap, topics, sim_url, [custom_stage("summary", topics.outputs["summary"])]
    )
    out_topic = topics.outputs["summary"]
    shutdown_timeout_s = cfg["worker"]["shutdown_timeout_s"]
    async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
        first = WorkerProcess(cfg, tmp_path, name="first").start()
        try:
            await wait_for_outputs(reader, out_topic, 300, 60)
            first.signal(signal.SIGTERM)
            start = time.monotonic()
            assert first.wait(shutdown_timeout_s + 10) == 0
            assert time.monotonic() - start < shutdown_timeout_s + 5
        finally:
            first.stop()
        assert count_outputs(reader, out_topic) < n  # it really stopped mid-stream
        second = WorkerProcess(cfg, tmp_path, name="second").start()
        try:
            await wait_for_outputs(reader, out_topic, n, 120)
            await reader.settle(quiet_s=1.0)
            second.signal(signal.SIGTERM)
            assert second.wait(15) == 0
        finally:
            second.stop()
    ids = reader.ids(out_topic)
    assert set(ids) == {f"doc-{i}" for i in range(n)}
    assert len(ids) == n, f"{len(ids) - n} duplicates"
    assert "partitions released" in first.log_text()


async def test_second_signal_exits_at_once_without_committing_unfinished(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=1)
    records = [doc(i) for i in range(20)] + [doc(20, "[[sim:latency=30]] stuck")]
    records += [doc(i) for i in range(21, 40)]
    await produce(kafka_bootstrap, topics.input, records)
    cfg = worker_config(
        kafka_bootstrap,
        topics,
        sim_url,
        [custom_stage("summary", topics.outputs["summary"])],
        llm__timeout_s=60,
        worker__shutdown_timeout_s=30,
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await wait_for_outputs(reader, topics.outputs["summary"], 39, 60)
        worker.signal(signal.SIGTERM)  # graceful: would wait up to 30 s for the stuck one
        await asyncio.to_thread(wait_for_log, worker, "signal received", 10)
        start = time.monotonic()
        worker.signal(signal.SIGINT)  # second signal: exit at once
        assert worker.wait(5) == 2
        assert time.monotonic() - start < 3
    finally:
        worker.stop()
    # Nothing past the unfinished record was committed: it will be processed again.
    got = await committed(kafka_bootstrap, topics.group, topics.input, 1)
    assert got[0] <= 20


def test_sigterm_during_start_up_exits_0(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    cfg = worker_config(
        kafka_bootstrap, topics, sim_url, [custom_stage("summary", topics.outputs["summary"])]
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        time.sleep(0.3)  # inside the start-up imports, before the event loop exists
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        worker.stop()


# -- two workers ------------------------------------------------------------------------------
async def test_two_workers_one_stopped_mid_stream_lose_nothing(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap)
    n = 2000
    # 100 ms per request and 20 in flight: ~200 records/s per worker, so each half takes
    # ~5 s and the worker stopped after 400 outputs surely leaves work for the survivor.
    text = "[[sim:latency=0.1]] record {i} for the group test"
    await produce(kafka_bootstrap, topics.input, [doc(i, text.format(i=i)) for i in range(n)])
    cfg = worker_config(
        kafka_bootstrap,
        topics,
        sim_url,
        [custom_stage("summary", topics.outputs["summary"])],
        worker__max_inflight_records=20,
    )
    out_topic = topics.outputs["summary"]
    async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
        a = WorkerProcess(cfg, tmp_path, name="a").start()
        b = WorkerProcess(cfg, tmp_path, name="b").start()
        try:
            # Both members own partitions before one leaves.
            await reader.until(
                lambda r: (
                    len({p for p, _ in source_coords(r, out_topic)}) == 4
                    and "partitions assigned" in a.log_text()
                    and "partitions assigned" in b.log_text()
                ),
                60,
                "both workers consuming",
            )
            await wait_for_outputs(reader, out_topic, 400, 60)
            a.signal(signal.SIGTERM)
            assert a.wait(20) == 0
            await wait_for_outputs(reader, out_topic, n, 120)
            await reader.settle(quiet_s=1.0)
        finally:
            a.stop()
            b.stop()
    ids = reader.ids(out_topic)
    assert set(ids) == {f"doc-{i}" for i in range(n)}
    # The survivor gave its partitions back (drained and committed) in the rebalance.
    assert '"why": "revoke"' in b.log_text()


# -- LLM faults -------------------------------------------------------------------------------
async def test_simulator_faults_end_in_output_or_dlq_and_no_partition_stalls(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    faults = FaultConfig(
        rate_429=0.1,
        retry_after_s=0.05,
        rate_500=0.1,
        rate_503=0.05,
        rate_hang=0.03,
        hang_s=5.0,
        rate_malformed=0.05,
        rate_empty_choices=0.02,
    )
    config = SimulatorConfig(
        latency=LatencyModel(kind="fixed", fixed_s=0.002), faults=faults, seed=7
    )
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap)
    n = 400
    records = [doc(i) for i in range(n)]
    # Records that can never succeed: a non-retryable 400 and a 500 on every attempt.
    records[10] = doc(10, "[[sim:400]] rejected by the server")
    records[20] = doc(20, "[[sim:500]] always failing")
    records[30] = doc(30, "[[sim:fail_first=2:429]] rate limited twice, then fine")
    await produce(kafka_bootstrap, topics.input, records)
    with SimulatorProcess(config) as sim:
        cfg = worker_config(
            kafka_bootstrap,
            topics,
            sim.base_url,
            [custom_stage("summary", topics.outputs["summary"])],
            llm__timeout_s=0.5,
            llm__max_attempts=3,
        )
        out_topic = topics.outputs["summary"]
        worker = WorkerProcess(cfg, tmp_path).start()
        try:
            async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
                await reader.until(
                    lambda r: len(set(r.ids(out_topic)) | set(r.ids(topics.dlq))) >= n, 90, "all"
                )
                await reader.settle(quiet_s=0.5)
                ends = await partition_ends(kafka_bootstrap, topics.input, 4)
                await assert_commits_reach_end(kafka_bootstrap, topics, ends, 15)
            stats = sim.stats()
        finally:
            worker.stop()
    ids = {f"doc-{i}" for i in range(n)}
    assert set(reader.ids(out_topic)) | set(reader.ids(topics.dlq)) == ids
    dlq = {r.json()["id"]: r.headers for r in reader.records[topics.dlq]}
    # Random faults hit these records too, so allow for attempts used up by them.
    assert dlq["doc-10"][E + "class"] == "BadRequestError" or dlq["doc-10"][E + "attempts"] == "3"
    if dlq["doc-10"][E + "class"] == "BadRequestError":
        assert dlq["doc-10"][E + "reason"] == "http_400"  # a 400 is never retried
    assert dlq["doc-20"][E + "attempts"] == "3"  # every attempt failed
    assert dlq["doc-20"][E + "stage"] == "summary"
    assert "doc-30" in reader.ids(out_topic) or dlq["doc-30"][E + "attempts"] == "3"
    for headers in dlq.values():
        assert headers[E + "topic"] == topics.input
        assert int(headers[E + "attempts"]) >= 1
        assert headers[E + "class"] in LLM_ERROR_CLASSES, headers
    # Faults really happened and were retried.
    assert stats.status_counts.get(429, 0) > 0 and stats.status_counts.get(500, 0) > 0


# -- bad inputs -------------------------------------------------------------------------------
async def test_bad_inputs_are_dead_lettered_with_reason_and_commits_advance(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=1)
    bad: dict[str, tuple[bytes, bytes]] = {
        "not_json": (b"bad-json", b"{this is not json"),
        "not_utf8": (b"bad-utf8", b'{"text": "\xff\xfe broken"}'),
        "missing_text": (b"bad-missing", orjson.dumps({"id": "x", "body": "no text field"})),
        "too_large": (b"bad-large", orjson.dumps({"id": "big", "text": "a" * 10_000_000})),
        "empty_text": (b"bad-empty", orjson.dumps({"id": "empty", "text": ""})),
    }
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, item in enumerate(bad.values()):
        records.append(doc(i))
        records.append(item)
    records.append(doc(99))
    await produce(kafka_bootstrap, topics.input, records)
    cfg = worker_config(
        kafka_bootstrap, topics, sim_url, [custom_stage("summary", topics.outputs["summary"])]
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await reader.until(lambda r: len(r.records[topics.dlq]) >= len(bad), 60, "the DLQ")
            await wait_for_outputs(reader, topics.outputs["summary"], 6, 30)
            by_key = {rec.key: rec for rec in reader.records[topics.dlq]}
            for reason, (key, value) in bad.items():
                rec = by_key[key]
                assert rec.value == value  # original bytes, unchanged
                assert rec.headers[E + "reason"] == reason
                assert rec.headers[E + "class"] == f"BadRecord.{reason}"
                assert rec.headers[E + "stage"] == "decode"
                assert rec.headers[E + "topic"] == topics.input
                assert rec.headers[E + "partition"] == "0"
                assert int(rec.headers[E + "offset"]) == records.index((key, value))
        await assert_commits_reach_end(kafka_bootstrap, topics, {0: len(records)}, 15)
    finally:
        worker.stop()


# -- one slow record --------------------------------------------------------------------------
async def test_slow_record_holds_back_only_itself_and_the_commit(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    await topics.create(kafka_bootstrap, partitions=1)
    n_fast = 200
    records = [doc(0, "[[sim:latency=10]] the slow one")] + [doc(i) for i in range(1, n_fast + 1)]
    await produce(kafka_bootstrap, topics.input, records)
    cfg = worker_config(
        kafka_bootstrap,
        topics,
        sim_url,
        [custom_stage("summary", topics.outputs["summary"])],
        llm__timeout_s=20,
    )
    out_topic = topics.outputs["summary"]
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        async with TopicReader(kafka_bootstrap, topics.all_outputs()) as reader:
            await wait_for_outputs(reader, out_topic, n_fast, 30)
            started = time.monotonic()
            assert "doc-0" not in reader.ids(out_topic)  # the others did not wait for it
            # While it is in flight the commit stays at its offset (0), across several
            # commit intervals.
            for _ in range(3):
                got = await committed(kafka_bootstrap, topics.group, topics.input, 1)
                assert got[0] in (-1, 0), got
                await asyncio.sleep(0.5)
            await reader.until(lambda r: "doc-0" in r.ids(out_topic), 30, "the slow record")
            assert time.monotonic() - started > 1.0
        await assert_commits_reach_end(kafka_bootstrap, topics, {0: n_fast + 1}, 10)
    finally:
        worker.stop()


# -- broker restart ---------------------------------------------------------------------------
async def test_broker_restart_loses_nothing(sim_url: str, tmp_path: Path) -> None:
    s3 = MotoS3Server()
    s3.start()  # moto[server] is a dev dependency: a missing one must fail, not skip
    broker = EmbeddedBroker(storage="s3", s3_endpoint=s3.endpoint, log_path=tmp_path / "tansu.log")
    try:
        bootstrap = broker.start()
        topics = Topics.make(["summary"])
        await topics.create(bootstrap)
        n = 3000
        # 100 ms per request, 50 in flight: about 500 records/s, so the restart is mid-stream.
        text = "[[sim:latency=0.1]] record {i} for the restart test"
        await produce(bootstrap, topics.input, [doc(i, text.format(i=i)) for i in range(n)])
        cfg = worker_config(
            bootstrap,
            topics,
            sim_url,
            [custom_stage("summary", topics.outputs["summary"])],
            worker__max_inflight_records=50,
        )
        out_topic = topics.outputs["summary"]
        worker = WorkerProcess(cfg, tmp_path).start()
        try:
            async with TopicReader(bootstrap, topics.all_outputs()) as reader:
                await wait_for_outputs(reader, out_topic, 100, 60)
            t0 = time.monotonic()
            broker.restart(down_s=1.0)
            print(f"broker restarted in {time.monotonic() - t0:.1f}s")
            async with TopicReader(bootstrap, [out_topic]) as reader:
                await reader.poll()
                assert count_outputs(reader, out_topic) < n  # the restart was mid-stream
            assert worker.alive()
            async with TopicReader(bootstrap, topics.all_outputs()) as reader:
                await reader.until(
                    lambda r: set(r.ids(out_topic)) >= {f"doc-{i}" for i in range(n)}, 120, "all"
                )
            worker.signal(signal.SIGTERM)
            assert worker.wait(20) == 0
        finally:
            worker.stop()
    finally:
        broker.stop()
        s3.stop()
