"""DocumentBatch, Stage column checks, RecordStage error rows, Pipeline, the sync runner."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from streamsynth.engine import (
    ERROR_COLUMN,
    DocumentBatch,
    LLMCall,
    MissingColumnError,
    Output,
    Pipeline,
    RecordOutcome,
    RecordStage,
    SourceRef,
)


class Upper(RecordStage):
    """Uppercases ``text`` into ``upper``; fails on 'boom', filters 'skip'."""

    name = "Upper"

    def inputs(self) -> list[str]:
        return ["text"]

    def outputs(self) -> list[str]:
        return ["upper"]

    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        text = record["text"]
        if text == "boom":
            return RecordOutcome(error=ValueError("boom!"))
        if text == "skip":
            return RecordOutcome(filtered="skipped")
        call = LLMCall("m", 3, 5, "stop", 0.01, 1)
        return RecordOutcome(outputs=[Output({**record, "upper": text.upper()}, [call])])


class Explode(RecordStage):
    name = "Explode"

    def inputs(self) -> list[str]:
        return ["upper"]

    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        parts = str(record["upper"]).split()
        rows = [{"id": record["id"], "word": w, "segment_index": i} for i, w in enumerate(parts)]
        return RecordOutcome(outputs=[Output(row) for row in rows])


def test_batch_round_trips_records_and_hides_sources() -> None:
    sources = [SourceRef("t", 0, 10, b"k", 1000), SourceRef("t", 1, 7, None, None)]
    batch = DocumentBatch.from_records([{"id": 1, "text": "a"}, {"id": 2, "text": "b"}], sources)
    assert batch.num_items == 2
    assert batch.columns == ["id", "text"]
    assert list(batch.to_pandas().columns) == ["id", "text"]
    assert "_src_offset" in batch.to_pyarrow(include_sources=True).column_names
    assert batch.sources() == sources
    assert batch.to_records() == [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}]


def test_batch_rejects_mismatched_sources() -> None:
    with pytest.raises(ValueError, match="1 sources for 2 records"):
        DocumentBatch.from_records([{"a": 1}, {"a": 2}], [SourceRef("t", 0, 0)])


def test_missing_column_names_stage_and_column() -> None:
    batch = DocumentBatch.from_records([{"id": 1, "body": "x"}])
    with pytest.raises(MissingColumnError) as info:
        Upper().process(batch)
    assert info.value.stage == "Upper" and info.value.column == "text"
    assert "stage 'Upper' requires column 'text'" in str(info.value)


def test_failed_row_keeps_its_place_filtered_row_is_dropped() -> None:
    records = [{"id": i, "text": t} for i, t in enumerate(["a", "boom", "skip", "d"])]
    sources = [SourceRef("t", 0, i) for i in range(4)]
    out = Upper().process(DocumentBatch.from_records(records, sources))
    rows = out.to_records()
    assert [r["id"] for r in rows] == [0, 1, 3]
    assert rows[0]["upper"] == "A" and rows[0][ERROR_COLUMN] is None
    assert rows[1]["upper"] is None and rows[1][ERROR_COLUMN] == "ValueError: boom!"
    assert rows[0]["_prompt_tokens"] == 3 and rows[0]["_completion_tokens"] == 5
    assert [s.offset for s in out.sources() if s] == [0, 1, 3]


def test_pipeline_chains_and_sources_follow_exploded_rows() -> None:
    sources = [SourceRef("t", 2, 40)]
    batch = DocumentBatch.from_records([{"id": 9, "text": "x y z"}], sources)
    pipeline = Pipeline([Upper(), Explode()])
    out = pipeline.process(batch)
    assert [r["word"] for r in out.to_records()] == ["X", "Y", "Z"]
    assert [s.offset for s in out.sources() if s] == [40, 40, 40]
    assert "Upper" in repr(pipeline) and "Explode" in repr(pipeline)


def test_pipeline_needs_stages() -> None:
    with pytest.raises(ValueError):
        Pipeline([])


async def test_process_from_inside_a_running_loop() -> None:
    # The sync API must work (and give the same answer) when a loop already runs here.
    batch = DocumentBatch.from_records([{"id": 1, "text": "hi"}])
    sync_rows = Upper().process(batch).to_records()
    async_rows = (await Upper().aprocess(batch)).to_records()
    assert sync_rows == async_rows
    assert asyncio.get_running_loop().is_running()


def test_a_stage_bug_becomes_an_error_row_not_a_lost_batch() -> None:
    class Buggy(Upper):
        async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
            if record["id"] == 1:
                raise RuntimeError("bug")
            return await super().aprocess_record(record)

    batch = DocumentBatch.from_records([{"id": 0, "text": "a"}, {"id": 1, "text": "b"}])
    out = Buggy().process(batch)
    errors = [r[ERROR_COLUMN] for r in out.to_records()]
    assert errors == [None, "RuntimeError: bug"]
