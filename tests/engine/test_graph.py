"""Stage graphs: conditions, validation, evaluation of one record, the batch Pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from streamsynth.engine import (
    ERROR_COLUMN,
    STAGE_COLUMN,
    DocumentBatch,
    GraphError,
    GraphNode,
    Output,
    Pipeline,
    RecordOutcome,
    RecordStage,
    SourceRef,
    StageGraph,
    evaluate,
    parse_when,
)

# -- conditions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "row", "expected"),
    [
        ({"gt": 11}, {"f": 12}, True),
        ({"gt": 11}, {"f": 11}, False),
        ({"gt": 11}, {"f": 11.5}, True),  # numbers compare as numbers
        ({"gte": 11}, {"f": 11.0}, True),
        ({"lt": 5}, {"f": 4}, True),
        ({"lte": 5}, {"f": 6}, False),
        ({"gt": 11}, {"f": "12"}, False),  # wrong type: a miss, not a crash
        ({"gt": 11}, {"f": True}, False),  # a boolean is not a number
        ({"gt": 11}, {"f": None}, False),
        ({"gt": 11}, {"f": [12]}, False),
        ({"gt": "b"}, {"f": "c"}, True),  # strings order as strings
        ({"eq": 1}, {"f": 1.0}, True),
        ({"eq": 1}, {"f": True}, False),
        ({"eq": "1"}, {"f": 1}, False),
        ({"eq": None}, {"f": None}, True),
        ({"ne": "en"}, {"f": "fr"}, True),
        ({"ne": "en"}, {"f": "en"}, False),
        ({"in": ["en", "fr"]}, {"f": "fr"}, True),
        ({"in": [1, 2]}, {"f": 2.0}, True),
        ({"in": [1, 2]}, {"f": {"x": 1}}, False),
        ({"not_in": ["en"]}, {"f": "de"}, True),
        ({"not_in": ["en"]}, {"f": "en"}, False),
        ({"exists": True}, {"f": None}, True),
        ({"exists": False}, {"f": 0}, False),
        ({"exists": False}, {}, True),
        # a missing field fails every condition but exists: false
        ({"exists": True}, {}, False),
        ({"eq": None}, {}, False),
        ({"ne": 3}, {}, False),
        ({"not_in": [3]}, {}, False),
        ({"lt": 3}, {}, False),
        ({"gt": 0, "lt": 10}, {"f": 5}, True),  # all must hold
        ({"gt": 0, "lt": 10}, {"f": 10}, False),
    ],
)
def test_conditions(cond: dict[str, Any], row: dict[str, Any], expected: bool) -> None:
    assert parse_when({"f": cond}).matches(row) is expected


def test_nan_matches_no_order_condition() -> None:
    when = parse_when({"f": {"gte": 0}})
    assert not when.matches({"f": float("nan")})


def test_every_field_of_when_must_hold() -> None:
    when = parse_when({"a": {"eq": 1}, "b": {"exists": True}})
    assert when.matches({"a": 1, "b": 0})
    assert not when.matches({"a": 1})
    assert parse_when(None).matches({})


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        ({"f": {"gte2": 1}}, "when.f.gte2", "unknown condition operator"),
        ({"f": {"gt": [1]}}, "when.f.gt", "takes a number or a string, not a list"),
        ({"f": {"gt": True}}, "when.f.gt", "not a boolean"),
        ({"f": {"in": 3}}, "when.f.in", "takes a list of values"),
        ({"f": {"not_in": [{"a": 1}]}}, "when.f.not_in", "takes a list of values"),
        ({"f": {"exists": "yes"}}, "when.f.exists", "true or false"),
        ({"f": {"eq": {"a": 1}}}, "when.f.eq", "not a mapping"),
        ({"f": 11}, "when.f", "mapping of operator -> value"),
        ({"f": {}}, "when.f", "mapping of operator -> value"),
        ([1], "when", "must be a mapping"),
    ],
)
def test_bad_when_names_the_field(raw: Any, path: str, message: str) -> None:
    with pytest.raises(GraphError) as info:
        parse_when(raw)
    assert info.value.path == path
    assert message in info.value.message


# -- graph validation --------------------------------------------------------------------


def test_build_orders_upstream_first_and_finds_roots() -> None:
    graph = StageGraph.build(
        [
            GraphNode("judge", input_from="gen"),
            GraphNode("gen"),
            GraphNode("other", when={"x": {"eq": 1}}),
            GraphNode("refine", input_from="judge"),
        ]
    )
    assert graph.roots == ("gen", "other")
    assert graph.order == ("gen", "other", "judge", "refine")
    assert graph.nodes["gen"].children == ("judge",)
    assert not graph.is_flat()
    assert StageGraph.flat(["a", "b"]).is_flat()


@pytest.mark.parametrize(
    ("nodes", "path", "message"),
    [
        ([GraphNode("a", input_from="a")], "stages.0.input_from", "its own output"),
        (
            [GraphNode("a", input_from="b"), GraphNode("b", input_from="a")],
            "stages.0.input_from",
            "cycle: a -> b -> a",
        ),
        (
            [
                GraphNode("root"),
                GraphNode("a", input_from="c"),
                GraphNode("b", input_from="a"),
                GraphNode("c", input_from="b"),
            ],
            "stages.1.input_from",
            "cycle: a -> c -> b -> a",
        ),
        ([GraphNode("a", input_from="zz")], "stages.0.input_from", "no stage is named 'zz'"),
        (
            [GraphNode("a"), GraphNode("b"), GraphNode("c", input_from=["a", "b"])],
            "stages.2.input_from",
            "fan-in is not supported",
        ),
        ([GraphNode("a"), GraphNode("a")], "stages.1.name", "two stages are named 'a'"),
        (
            [GraphNode("a"), GraphNode("b", when={"n": {"between": 1}})],
            "stages.1.when.n.between",
            "unknown condition operator",
        ),
    ],
)
def test_bad_graphs_name_the_field(nodes: list[GraphNode], path: str, message: str) -> None:
    with pytest.raises(GraphError) as info:
        StageGraph.build(nodes)
    assert info.value.path == path
    assert message in info.value.message


def test_a_one_item_list_is_one_upstream() -> None:
    graph = StageGraph.build([GraphNode("a"), GraphNode("b", input_from=["a"])])
    assert graph.upstream_of("b") == "a"


# -- evaluating one record -------------------------------------------------------------


class Recorder:
    """A ``run`` function: answers per stage, remembers what each stage received."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, stage: str, row: Mapping[str, Any]) -> RecordOutcome:
        self.seen.append((stage, dict(row)))
        await asyncio.sleep(0.001 if stage == "split" else 0)
        if stage == "split":
            words = str(row["text"]).split()
            return RecordOutcome(
                outputs=[
                    Output({**row, "part": w, "segment_index": i}) for i, w in enumerate(words)
                ]
            )
        if stage == "fail" or row.get("part") == "bad":
            return RecordOutcome(error=RuntimeError(f"{stage} failed"))
        if row.get("part") == "drop":
            return RecordOutcome(filtered="too_short")
        source = row.get("part", row.get("text"))
        return RecordOutcome(outputs=[Output({**row, stage: f"{stage}({source})"})])


def test_evaluate_routes_chains_and_skips() -> None:
    graph = StageGraph.build(
        [
            GraphNode("split", when={"q": {"gt": 11}}),
            GraphNode("upper", input_from="split", when={"part": {"ne": "skipme"}}),
            GraphNode("low", when={"q": {"lte": 11}}),
        ]
    )
    rec = Recorder()
    runs = asyncio.run(evaluate(graph, {"text": "a skipme bad drop", "q": 12}, rec))
    assert [(r.stage, r.skipped) for r in runs] == [
        ("split", False),
        ("low", True),
        ("upper", False),
        ("upper", True),
        ("upper", False),
        ("upper", False),
    ]
    upper = [r for r in runs if r.stage == "upper"]
    assert [r.parent_index for r in upper] == [0, 1, 2, 3]
    assert all(r.parent is runs[0] for r in upper)
    assert upper[0].outcome is not None and upper[0].outcome.outputs[0].data["upper"] == "upper(a)"
    assert upper[2].outcome is not None and upper[2].outcome.error is not None
    assert upper[3].outcome is not None and upper[3].outcome.filtered == "too_short"
    # The chained stage received the upstream's output row; the skipped stage nothing.
    assert [s for s, _ in rec.seen].count("low") == 0
    assert ("upper", {"text": "a skipme bad drop", "q": 12, "part": "a", "segment_index": 0}) in (
        rec.seen
    )


def test_a_failed_upstream_feeds_nothing_downstream() -> None:
    graph = StageGraph.build([GraphNode("fail"), GraphNode("after", input_from="fail")])
    rec = Recorder()
    runs = asyncio.run(evaluate(graph, {"text": "x"}, rec))
    assert [r.stage for r in runs] == ["fail"]
    assert [s for s, _ in rec.seen] == ["fail"]


def test_evaluate_turns_a_raising_run_into_an_error() -> None:
    async def run(stage: str, row: Mapping[str, Any]) -> RecordOutcome:
        raise KeyError("bug")

    [item] = asyncio.run(evaluate(StageGraph.flat(["a"]), {"text": "x"}, run))
    assert item.outcome is not None and isinstance(item.outcome.error, KeyError)


def test_evaluate_order_does_not_depend_on_answer_order() -> None:
    graph = StageGraph.build(
        [GraphNode("split"), GraphNode("s2", input_from="split"), GraphNode("s3", input_from="s2")]
    )

    async def run(stage: str, row: Mapping[str, Any]) -> RecordOutcome:
        if stage == "split":
            return RecordOutcome(outputs=[Output({"n": i}) for i in range(5)])
        await asyncio.sleep(0.001 * (5 - int(row["n"])))  # later rows answer first
        return RecordOutcome(outputs=[Output({**row, stage: True})])

    runs = asyncio.run(evaluate(graph, {}, run))
    assert [(r.stage, r.lineage) for r in runs] == [
        ("split", ()),
        *[("s2", (i,)) for i in range(5)],
        *[("s3", (i, 0)) for i in range(5)],
    ]


# -- the batch Pipeline ------------------------------------------------------------------


class Words(RecordStage):
    """One row per word of ``text`` (a segmented stage)."""

    name = "words"

    def inputs(self) -> list[str]:
        return ["text"]

    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        words = str(record["text"]).split()
        return RecordOutcome(
            outputs=[Output({**record, "word": w, "segment_index": i}) for i, w in enumerate(words)]
        )


class Shout(RecordStage):
    """Uppercases ``field`` into ``name``; fails on 'boom'."""

    def __init__(self, name: str, field: str) -> None:
        self.name = name
        self.field = field

    def inputs(self) -> list[str]:
        return [self.field]

    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        value = str(record[self.field])
        if "boom" in value:
            return RecordOutcome(error=ValueError("boom"))
        return RecordOutcome(outputs=[Output({**record, self.name: value.upper()})])


def _docs() -> DocumentBatch:
    records = [
        {"id": 1, "text": "one two", "q": 15},
        {"id": 2, "text": "three", "q": 3},
        {"id": 3, "text": "boom four", "q": 19},
        {"id": 4, "text": "five", "q": 12},
    ]
    return DocumentBatch.from_records(records, [SourceRef("in", 0, i) for i in range(len(records))])


def test_pipeline_without_graph_keys_is_still_a_chain() -> None:
    pipe = Pipeline([Words(), Shout("loud", "word")])
    assert pipe.graph is None
    out = pipe.process(_docs()).to_records()
    assert [r["loud"] for r in out if r[ERROR_COLUMN] is None] == [
        "ONE", "TWO", "THREE", "FOUR", "FIVE",
    ]  # fmt: skip


def test_pipeline_graph_routes_chains_and_counts_skips() -> None:
    pipe = Pipeline(
        [Words(), Shout("loud", "word"), Shout("para", "text")],
        when={"words": {"q": {"gt": 11}}, "para": {"q": {"lte": 11}}},
        input_from={"loud": "words"},
    )
    by_stage = pipe.process_by_stage(_docs())
    assert list(by_stage) == ["words", "para", "loud"]
    assert [r["word"] for r in by_stage["words"].to_records()] == [
        "one", "two", "boom", "four", "five",
    ]  # fmt: skip
    loud = by_stage["loud"].to_records()
    assert [(r["id"], r["loud"], r[ERROR_COLUMN] is None) for r in loud] == [
        (1, "ONE", True),
        (1, "TWO", True),
        (3, None, False),
        (3, "FOUR", True),
        (4, "FIVE", True),
    ]
    assert [r["para"] for r in by_stage["para"].to_records()] == ["THREE"]
    assert pipe.skipped == {"words": 1, "para": 3, "loud": 0}
    # Sources follow rows through routing and chaining.
    assert [s.offset for s in by_stage["loud"].sources() if s] == [0, 0, 2, 2, 3]
    merged = pipe.process(_docs())
    assert merged.num_items == 5 + 5 + 1
    assert [r[STAGE_COLUMN] for r in merged.to_records()].count("para") == 1


def test_pipeline_graph_passes_no_failed_row_downstream() -> None:
    pipe = Pipeline(
        [Shout("first", "text"), Shout("second", "first")], input_from={"second": "first"}
    )
    by_stage = pipe.process_by_stage(_docs())
    assert [r[ERROR_COLUMN] is None for r in by_stage["first"].to_records()] == [
        True, True, False, True,
    ]  # fmt: skip
    assert [r["id"] for r in by_stage["second"].to_records()] == [1, 2, 4]


def test_pipeline_graph_with_every_row_skipped_keeps_going() -> None:
    pipe = Pipeline(
        [Shout("first", "text"), Shout("second", "first")],
        when={"first": {"q": {"gt": 100}}},
        input_from={"second": "first"},
    )
    by_stage = pipe.process_by_stage(_docs())
    assert by_stage["first"].num_items == 0 and by_stage["second"].num_items == 0
    assert pipe.skipped == {"first": 4, "second": 0}


def test_pipeline_graph_errors() -> None:
    with pytest.raises(ValueError, match="no stage is named 'nope'"):
        Pipeline([Shout("a", "text")], when={"nope": {"x": {"eq": 1}}})
    with pytest.raises(GraphError, match="cycle"):
        Pipeline([Shout("a", "text"), Shout("b", "a")], input_from={"a": "b", "b": "a"})
