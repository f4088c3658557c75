"""Stage: the unit of work of the engine.

A stage declares the columns it reads (``inputs``) and writes (``outputs``);
they are checked before processing. Every stage has a native async
``aprocess(batch)`` and a synchronous ``process(batch)`` that runs it on the
shared background loop.

A :class:`RecordStage` also processes one document at a time
(``aprocess_record``): that is what the Kafka worker calls, so that a slow
record holds back nothing but itself. Its batch API is built on the record API,
so both paths share one implementation.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamsynth.engine.batch import DocumentBatch, SourceRef
from streamsynth.engine.errors import MissingColumnError
from streamsynth.engine.loop import run_sync

#: Columns a RecordStage adds to every row of its batch output.
ERROR_COLUMN = "_error"
STAT_COLUMNS = ("_prompt_tokens", "_completion_tokens", "_finish_reason", "_latency_s", "_attempts")


# Not frozen, though never changed after it is made: a frozen dataclass's __init__
# sets each field through object.__setattr__ (2 us for these eleven, against 0.35 us),
# and one is made per LLM call on the record path.
@dataclass(slots=True)
class LLMCall:
    """What one LLM request of a record cost (read-only by convention)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    latency_s: float
    attempts: int
    cached: bool = False
    # Lineage (what was asked, where), for the output's metadata and its output_id.
    #: The model asked for (``model`` is what the server says answered).
    request_model: str | None = None
    #: The generation parameters actually sent (the body without model and messages).
    generation: dict[str, Any] | None = None
    endpoint: str | None = None
    #: Prompt tokens the server answered from its prefix cache, when it says.
    cached_tokens: int | None = None


@dataclass(slots=True)
class Output:
    """One row a stage produces for a record, with the LLM calls that made it."""

    data: dict[str, Any]
    calls: list[LLMCall] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def latency_s(self) -> float:
        return max((c.latency_s for c in self.calls), default=0.0)

    @property
    def attempts(self) -> int:
        return sum(c.attempts for c in self.calls)

    @property
    def finish_reason(self) -> str | None:
        reasons = [c.finish_reason for c in self.calls]
        # "length" anywhere means some part was truncated: report it over "stop".
        if "length" in reasons:
            return "length"
        return reasons[-1] if reasons else None

    @property
    def model(self) -> str | None:
        return self.calls[-1].model if self.calls else None


@dataclass(slots=True)
class RecordOutcome:
    """The result of one stage on one record.

    Exactly one of three things happened: ``outputs`` were produced, the record
    was ``filtered`` on purpose (the reason says by what), or it failed with
    ``error``. ``calls`` lists every LLM request made, including those of
    segments that were later filtered, so that cost is never under-reported.
    """

    outputs: list[Output] = field(default_factory=list)
    filtered: str | None = None
    error: BaseException | None = None
    calls: list[LLMCall] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Stage(ABC):
    """Base of every stage."""

    name: str = "Stage"

    def inputs(self) -> list[str]:
        """Columns this stage requires."""
        return []

    def outputs(self) -> list[str]:
        """Columns this stage adds."""
        return []

    def setup(self) -> None:
        """Acquire resources once, before the first batch."""

    def teardown(self) -> None:
        """Release what ``setup`` acquired."""

    async def asetup(self) -> None:
        self.setup()

    async def ateardown(self) -> None:
        self.teardown()

    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise :class:`MissingColumnError` naming the first required column not present."""
        have = list(columns)
        present = set(have)
        for column in self.inputs():
            if column not in present:
                raise MissingColumnError(self.name, column, have)

    @abstractmethod
    async def aprocess(self, batch: DocumentBatch) -> DocumentBatch:
        """Process one batch on the caller's event loop."""

    def process(self, batch: DocumentBatch) -> DocumentBatch:
        """Process one batch from synchronous code (also inside a running loop)."""
        return run_sync(self.aprocess(batch))


class RecordStage(Stage):
    """A stage that processes each document independently of the others."""

    @abstractmethod
    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        """Process one document. Must not raise: failures go in ``RecordOutcome.error``."""

    def prompt_sha256(self) -> str | None:
        """The digest of what this stage asks (system prompt and template), for lineage.

        None for a stage without a prompt. It enters every output's ``output_id``, so a
        changed prompt changes the ids of exactly this stage's outputs.
        """
        return None

    async def _timed(self, record: Mapping[str, Any]) -> RecordOutcome:
        start = time.perf_counter()
        try:
            outcome = await self.aprocess_record(record)
        except Exception as exc:  # a bug in a subclass must not sink the batch
            outcome = RecordOutcome(error=exc)
        outcome.duration_s = time.perf_counter() - start
        return outcome

    async def aprocess(self, batch: DocumentBatch) -> DocumentBatch:
        self.check_columns(batch.columns)
        records = batch.to_records()
        sources = batch.sources()
        outcomes = await asyncio.gather(*(self._timed(r) for r in records))
        rows: list[dict[str, Any]] = []
        row_sources: list[SourceRef | None] = []
        for record, source, outcome in zip(records, sources, outcomes, strict=True):
            for row in self.rows_for(record, outcome):
                rows.append(row)
                row_sources.append(source)
        return batch.with_rows(rows, row_sources if batch.has_sources() else None)

    def rows_for(self, record: Mapping[str, Any], outcome: RecordOutcome) -> list[dict[str, Any]]:
        """The batch rows for one record: its outputs, or the record marked with its error.

        A failed record keeps its row (outputs empty, error set); a filtered one is dropped.
        """
        if outcome.error is not None:
            row = dict(record)
            for column in self.outputs():
                row.setdefault(column, None)
            row[ERROR_COLUMN] = f"{type(outcome.error).__name__}: {outcome.error}"
            row.update(_stats(outcome.calls))
            return [row]
        rows = []
        for output in outcome.outputs:
            row = dict(output.data)
            row[ERROR_COLUMN] = None
            row.update(_stats(output.calls))
            rows.append(row)
        return rows


def _stats(calls: list[LLMCall]) -> dict[str, Any]:
    out = Output({}, calls)
    return {
        "_prompt_tokens": out.prompt_tokens,
        "_completion_tokens": out.completion_tokens,
        "_finish_reason": out.finish_reason,
        "_latency_s": out.latency_s if calls else None,
        "_attempts": out.attempts,
    }
