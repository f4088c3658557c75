"""Pipeline: stages applied to a batch, one after another or as a stage graph.

Without ``when``/``input_from`` a pipeline is a chain (Curator's ``Pipeline``): the
output batch of one stage is the input of the next, and :meth:`Pipeline.process`
returns the last one.

With either, it is the same stage graph the Kafka worker runs
(:mod:`streamsynth.engine.graph`): a stage without ``input_from`` reads the input
batch, a chained stage reads its upstream's output rows (rows that failed
upstream are not passed on), and a stage's ``when`` selects which rows it
receives; the others are counted in :attr:`Pipeline.skipped`. The result holds
every stage's rows, tagged with their stage in the ``_stage`` column
(:meth:`Pipeline.process_by_stage` gives one batch per stage).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from streamsynth.engine.batch import DocumentBatch, SourceRef
from streamsynth.engine.graph import GraphNode, StageGraph
from streamsynth.engine.loop import run_sync
from streamsynth.engine.stage import ERROR_COLUMN, Stage

#: The column of a graph pipeline's result that names the stage each row came from.
STAGE_COLUMN = "_stage"


class Pipeline:
    """Chains stages, or runs them as a stage graph. See the module doc."""

    def __init__(
        self,
        stages: Sequence[Stage],
        name: str = "pipeline",
        *,
        when: Mapping[str, Mapping[str, Any]] | None = None,
        input_from: Mapping[str, str] | None = None,
    ) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.name = name
        self.stages = list(stages)
        self._by_name = {stage.name: stage for stage in self.stages}
        #: Rows each stage's ``when`` skipped in the last :meth:`process` call.
        self.skipped: dict[str, int] = {}
        self.graph: StageGraph | None = None
        if when is not None or input_from is not None:
            self.graph = _graph_of(self.stages, when or {}, input_from or {})

    def setup(self) -> None:
        for stage in self.stages:
            stage.setup()

    def teardown(self) -> None:
        for stage in reversed(self.stages):
            stage.teardown()

    async def aprocess(self, batch: DocumentBatch) -> DocumentBatch:
        if self.graph is None:
            for stage in self.stages:
                batch = await stage.aprocess(batch)
            return batch
        by_stage = await self.aprocess_by_stage(batch)
        rows: list[dict[str, Any]] = []
        sources: list[SourceRef | None] = []
        for name, out in by_stage.items():
            for row, source in zip(out.to_records(), out.sources(), strict=True):
                row[STAGE_COLUMN] = name
                rows.append(row)
                sources.append(source)
        return batch.with_rows(_aligned(rows), sources if batch.has_sources() else None)

    async def aprocess_by_stage(self, batch: DocumentBatch) -> dict[str, DocumentBatch]:
        """Each stage's output rows, in the graph's topological order."""
        graph = self.graph or _graph_of(self.stages, {}, {s.name: p.name for p, s in _pairs(self)})
        self.skipped = {name: 0 for name in graph.order}
        results: dict[str, DocumentBatch] = {}
        await self._run_level(graph, graph.roots, batch, results)
        return {name: results[name] for name in graph.order}

    async def _run_level(
        self,
        graph: StageGraph,
        names: Sequence[str],
        batch: DocumentBatch,
        results: dict[str, DocumentBatch],
    ) -> None:
        await asyncio.gather(*(self._run_node(graph, n, batch, results) for n in names))

    async def _run_node(
        self, graph: StageGraph, name: str, batch: DocumentBatch, results: dict[str, DocumentBatch]
    ) -> None:
        node = graph.nodes[name]
        selected = _select(batch, node.when.matches) if node.when.conditions else batch
        self.skipped[name] += batch.num_items - selected.num_items
        if selected.num_items:
            out = await self._by_name[name].aprocess(selected)
        else:
            out = selected
        results[name] = out
        if node.children:
            # The worker dead-letters a failed row; its readers never see it.
            passed = _select(out, lambda row: row.get(ERROR_COLUMN) is None)
            await self._run_level(graph, node.children, passed, results)

    def process(self, batch: DocumentBatch) -> DocumentBatch:
        return run_sync(self.aprocess(batch))

    def process_by_stage(self, batch: DocumentBatch) -> dict[str, DocumentBatch]:
        return run_sync(self.aprocess_by_stage(batch))

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, [{', '.join(s.name for s in self.stages)}])"


def _pairs(pipeline: Pipeline) -> list[tuple[Stage, Stage]]:
    """(upstream, stage) of a plain chain."""
    return list(zip(pipeline.stages, pipeline.stages[1:], strict=False))


def _graph_of(
    stages: Sequence[Stage], when: Mapping[str, Mapping[str, Any]], input_from: Mapping[str, str]
) -> StageGraph:
    names = [stage.name for stage in stages]
    for key in [*when, *input_from]:
        if key not in names:
            raise ValueError(f"no stage is named {key!r} (stages: {', '.join(names)})")
    return StageGraph.build(
        [
            GraphNode(n, when.get(n), input_from.get(n), path=f"stages.{i}")
            for i, n in enumerate(names)
        ]
    )


def _select(batch: DocumentBatch, keep: Any) -> DocumentBatch:
    """The rows of ``batch`` for which ``keep(row)`` holds, with their sources."""
    rows = batch.to_records()
    sources = batch.sources()
    chosen = [i for i, row in enumerate(rows) if keep(row)]
    if len(chosen) == len(rows):
        return batch
    out = batch.with_rows(
        [rows[i] for i in chosen], [sources[i] for i in chosen] if batch.has_sources() else None
    )
    if not chosen:
        # Keep the columns: the next stage checks the ones it reads even on no rows.
        out.data = batch.data.slice(0, 0)
    return out


def _aligned(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the union of their keys (pyarrow infers the columns from the first row)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [{c: row.get(c) for c in columns} for row in rows]
