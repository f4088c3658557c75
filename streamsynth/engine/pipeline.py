"""Pipeline: stages applied one after another to a batch."""

from __future__ import annotations

from collections.abc import Sequence

from streamsynth.engine.batch import DocumentBatch
from streamsynth.engine.loop import run_sync
from streamsynth.engine.stage import Stage


class Pipeline:
    """Chains stages: the output batch of one is the input of the next."""

    def __init__(self, stages: Sequence[Stage], name: str = "pipeline") -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.name = name
        self.stages = list(stages)

    def setup(self) -> None:
        for stage in self.stages:
            stage.setup()

    def teardown(self) -> None:
        for stage in reversed(self.stages):
            stage.teardown()

    async def aprocess(self, batch: DocumentBatch) -> DocumentBatch:
        for stage in self.stages:
            batch = await stage.aprocess(batch)
        return batch

    def process(self, batch: DocumentBatch) -> DocumentBatch:
        return run_sync(self.aprocess(batch))

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, [{', '.join(s.name for s in self.stages)}])"
