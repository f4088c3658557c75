"""The shared harness on a real broker: produce, read back, output validation, offsets."""

from __future__ import annotations

import jsonschema
import orjson
import pytest

from streamsynth.kafka.admin import create_topics
from streamsynth.testing.harness import (
    TopicReader,
    WorkerProcess,
    committed,
    parse_metrics,
    produce,
    unique,
)


async def test_produce_keys_documents_by_id_and_spreads_partitions(kafka_bootstrap: str) -> None:
    topic = unique("h")
    await create_topics(kafka_bootstrap, {topic: 2})
    docs = [{"id": f"d{i}", "text": "x"} for i in range(6)]
    assert await produce(kafka_bootstrap, topic, docs, partitions=2) == 6
    async with TopicReader(kafka_bootstrap, [topic]) as reader:
        await reader.until(lambda r: len(r.records[topic]) == 6, 30, "six records")
    assert sorted(reader.keys(topic)) == [f"d{i}" for i in range(6)]
    assert sorted(reader.ids(topic)) == [f"d{i}" for i in range(6)]
    assert {r.partition for r in reader.records[topic]} == {0, 1}
    assert all(r.timestamp_ms > 0 for r in reader.records[topic])


async def test_reader_rejects_an_output_that_breaks_the_schema(kafka_bootstrap: str) -> None:
    topic = unique("h")
    await create_topics(kafka_bootstrap, {topic: 1})
    not_an_output = orjson.dumps({"id": "a", "text": "plain input"})
    bad_output = orjson.dumps({"id": "b", "streamsynth": {"stage": 3}})
    await produce(kafka_bootstrap, topic, [(b"a", not_an_output), (b"b", bad_output)])
    async with TopicReader(kafka_bootstrap, [topic]) as reader:
        with pytest.raises(jsonschema.ValidationError):
            await reader.until(lambda r: len(r.records[topic]) == 2, 30, "two records")
    async with TopicReader(kafka_bootstrap, [topic], validate_outputs=False) as reader:
        await reader.until(lambda r: len(r.records[topic]) == 2, 30, "two records")
    assert reader.rows(topic)[1]["streamsynth"] == {"stage": 3}


async def test_committed_is_minus_one_for_a_group_that_never_committed(
    kafka_bootstrap: str,
) -> None:
    topic = unique("h")
    await create_topics(kafka_bootstrap, {topic: 3})
    assert await committed(kafka_bootstrap, unique("g"), topic, 3) == {0: -1, 1: -1, 2: -1}


def test_parse_metrics_sums_over_labels_or_splits_by_one() -> None:
    text = (
        "# TYPE t_total counter\n"
        't_total{type="input",stage="a"} 3\n'
        't_total{type="output",stage="a"} 2\n'
        't_total{type="input",stage="b"} 4\n'
    )
    assert parse_metrics(text)["t_total"] == {"": 9.0}
    assert parse_metrics(text, by="type")["t_total"] == {"input": 7.0, "output": 2.0}


def test_worker_process_runs_streamsynth_run_and_cleans_up_after_a_clean_exit() -> None:
    worker = WorkerProcess({"not": "a config"})
    assert worker.command()[1:4] == ["-m", "streamsynth.cli.main", "run"]
    worker.start()
    assert worker.wait(60) == 2  # a bad config: exit 2, as production reports it
    assert "error:" in worker.log_text()
    workdir = worker.workdir
    assert worker.stop() == 2
    assert workdir is not None and workdir.exists()  # a failed worker's log is kept
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()
