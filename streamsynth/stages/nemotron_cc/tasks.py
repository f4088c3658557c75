"""The five Nemotron-CC tasks as record stages.

Each stage turns one document into segments (``preprocess``), sends one LLM request
per segment concurrently, post-processes every answer (``postprocess``) and emits:

* segment-unit tasks: one output row per kept segment, whose ``input_field`` holds
  the segment, with the task's output field and ``segment_index``;
* Wikipedia paraphrasing: one row per document, the kept segment outputs re-joined.

A record whose every segment is dropped is ``filtered`` with a :class:`FilterReason`;
a failed request fails the whole record (it goes to the DLQ whole, never half done).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from abc import abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from streamsynth.engine.errors import PostProcessingError, StageConfigError
from streamsynth.engine.stage import LLMCall, Output, RecordOutcome
from streamsynth.llm.client import AsyncLLMClient, LLMClient
from streamsynth.llm.types import ChatResult, GenerationConfig
from streamsynth.stages.nemotron_cc import prompts
from streamsynth.stages.nemotron_cc.postprocess import (
    Dropped,
    PostResult,
    at_least,
    postprocess_diverse_qa,
    postprocess_extract_knowledge,
    postprocess_knowledge_list,
    postprocess_paraphrase,
    rejoin_segments,
)
from streamsynth.stages.nemotron_cc.preprocess import (
    FilterReason,
    Preprocessed,
    Segment,
    preprocess_document,
)
from streamsynth.stages.nemotron_cc.tokenizer import ApproxTokenizer, Tokenizer, load_tokenizer
from streamsynth.stages.synthetic import SyntheticStage, call_of, calls_of_error

logger = logging.getLogger(__name__)

#: The column that numbers a segment-unit task's output rows within their document.
SEGMENT_INDEX = "segment_index"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """The budgets of one task, in tokens (NeMo Curator's Nemotron-CC task configs).

    ``max_input_tokens`` is the segment budget; ``truncation_tokens`` (the output
    budget minus 2) is the longest answer not treated as truncated.
    """

    task: str
    output_field: str
    min_document_tokens: int
    min_segment_tokens: int
    max_input_tokens: int
    max_output_tokens: int
    truncation_tokens: int
    min_output_tokens: int
    prefix: str | None
    unit: Literal["document", "segment"]
    max_document_tokens: int | None = None


# Token budgets as NeMo Curator's Nemotron-CC tutorial configures them; every truncation
# threshold is the output budget minus 2.
TASK_SPECS: dict[str, TaskSpec] = {
    "wikipedia_paraphrasing": TaskSpec(
        task="wikipedia_paraphrasing",
        output_field="rephrased",
        min_document_tokens=5,
        min_segment_tokens=5,
        max_input_tokens=512,
        max_output_tokens=512,
        truncation_tokens=510,
        min_output_tokens=50,
        prefix=prompts.WIKIPEDIA_PREFIX,
        unit="document",
    ),
    "diverse_qa": TaskSpec(
        task="diverse_qa",
        output_field="diverse_qa",
        min_document_tokens=30,
        min_segment_tokens=30,
        max_input_tokens=1000,
        max_output_tokens=600,
        truncation_tokens=598,
        min_output_tokens=100,
        prefix=prompts.DIVERSE_QA_PREFIX,
        unit="segment",
    ),
    "distill": TaskSpec(
        task="distill",
        output_field="distill",
        min_document_tokens=30,
        min_segment_tokens=10,
        max_input_tokens=2000,
        max_output_tokens=1600,
        truncation_tokens=1598,
        min_output_tokens=50,
        prefix=prompts.DISTILL_PREFIX,
        unit="segment",
    ),
    "extract_knowledge": TaskSpec(
        task="extract_knowledge",
        output_field="extract_knowledge",
        min_document_tokens=30,
        min_segment_tokens=30,
        max_input_tokens=1400,
        max_output_tokens=1400,
        truncation_tokens=1398,
        min_output_tokens=50,
        prefix=None,
        unit="segment",
    ),
    "knowledge_list": TaskSpec(
        task="knowledge_list",
        output_field="knowledge_list",
        min_document_tokens=30,
        min_segment_tokens=30,
        max_input_tokens=1000,
        max_output_tokens=600,
        truncation_tokens=598,
        min_output_tokens=50,
        prefix=None,
        unit="segment",
    ),
}


def default_generation_config(spec: TaskSpec) -> GenerationConfig:
    """The Nemotron-CC sampling parameters, capped at the task's output budget."""
    return GenerationConfig(
        temperature=0.5, top_p=0.9, max_tokens=spec.max_output_tokens, stop=None
    )


@dataclass(slots=True)
class _Generation:
    """The answers to a document's segments (all of them unless ``error`` is set)."""

    results: list[ChatResult]
    calls: list[LLMCall]
    error: BaseException | None = None


@dataclass
class NemotronCCStage(SyntheticStage):
    """Base of the five tasks: segmenting, per-segment requests, post-processing."""

    spec: ClassVar[TaskSpec]

    tokenizer: Tokenizer = field(default_factory=ApproxTokenizer)
    #: Seeds DiverseQA's pair sampling, per record, from this and the record's id/text.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.generation_config is None:
            self.generation_config = default_generation_config(self.spec)
        super().__post_init__()
        prefix = self.spec.prefix
        if prefix is not None and self.prompt is not None and prefix not in self.prompt:
            # Every answer without the prefix is dropped: a custom prompt must ask for it.
            logger.warning(
                "stage %s: the prompt does not mention the required prefix %r", self.name, prefix
            )

    def outputs(self) -> list[str]:
        if self.spec.unit == "segment":
            return [self.output_field, SEGMENT_INDEX]
        return [self.output_field]

    # -- the three steps ---------------------------------------------------------------
    def preprocess(self, document: str) -> Preprocessed:
        return preprocess_document(
            document,
            self.tokenizer,
            min_document_tokens=self.spec.min_document_tokens,
            max_document_tokens=self.spec.max_document_tokens,
            max_segment_tokens=self.spec.max_input_tokens,
            min_segment_tokens=self.spec.min_segment_tokens,
        )

    @abstractmethod
    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        """The kept text for one segment's answer, or why it is dropped."""

    def record_rng(self, record: Mapping[str, Any], document: str) -> random.Random:
        """A RNG that depends only on ``seed`` and the record (not on processing order)."""
        key = record.get("id")
        material = f"{self.seed}\x00{document if key is None else key}"
        digest = hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    # -- record processing -------------------------------------------------------------
    async def aprocess_record(self, record: Mapping[str, Any]) -> RecordOutcome:
        """Segments → one request each → post-processing → outputs, filtered or error."""
        try:
            document = self.document_of(record)
            pre = self.preprocess(document)
        except Exception as exc:
            return RecordOutcome(error=exc)
        if pre.filtered is not None:
            return RecordOutcome(filtered=pre.filtered.value)
        generation = await self._generate(pre.segments)
        if generation.error is not None:
            return RecordOutcome(error=generation.error, calls=generation.calls)
        rng = self.record_rng(record, document)
        verdicts: list[PostResult] = []
        for segment, result in zip(pre.segments, generation.results, strict=True):
            try:
                verdicts.append(self.postprocess_answer(segment, result, rng))
            except Exception as exc:
                return RecordOutcome(
                    error=self._postprocessing_error(segment, exc), calls=generation.calls
                )
        if self.spec.unit == "document":
            return self._document_outcome(record, verdicts, generation.calls)
        return self._segment_outcome(record, pre.segments, verdicts, generation.calls)

    async def _generate(self, segments: Sequence[Segment]) -> _Generation:
        """One request per segment, concurrently; the first failure cancels the others.

        The record fails whole on any error, so the remaining answers would be wasted;
        a TaskGroup also cancels every request if the record itself is cancelled.
        """
        tasks: list[asyncio.Task[ChatResult]] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.agenerate(s.text)) for s in segments]
        except ExceptionGroup:
            pass  # each task is inspected below
        generation = _Generation([], [])
        for task in tasks:
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                generation.results.append(task.result())
                generation.calls.append(call_of(task.result()))
                continue
            generation.calls.extend(calls_of_error(exc, self))
            generation.error = generation.error or exc
        return generation

    def _postprocessing_error(self, segment: Segment, exc: Exception) -> PostProcessingError:
        error = PostProcessingError(
            f"stage {self.name!r}: post-processing segment {segment.index} failed: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

    def _segment_outcome(
        self,
        record: Mapping[str, Any],
        segments: Sequence[Segment],
        verdicts: Sequence[PostResult],
        calls: list[LLMCall],
    ) -> RecordOutcome:
        outputs: list[Output] = []
        for segment, verdict, call in zip(segments, verdicts, calls, strict=True):
            if isinstance(verdict, Dropped):
                continue
            data = dict(record)
            data[self.input_field] = segment.text
            data[self.output_field] = verdict
            data[SEGMENT_INDEX] = segment.index
            outputs.append(Output(data, [call]))
        if not outputs:
            return RecordOutcome(filtered=_dominant_reason(verdicts), calls=calls)
        return RecordOutcome(outputs=outputs, calls=calls)

    def _document_outcome(
        self, record: Mapping[str, Any], verdicts: Sequence[PostResult], calls: list[LLMCall]
    ) -> RecordOutcome:
        kept = [(v, c) for v, c in zip(verdicts, calls, strict=True) if not isinstance(v, Dropped)]
        if not kept:
            return RecordOutcome(filtered=_dominant_reason(verdicts), calls=calls)
        joined = rejoin_segments(text for text, _ in kept)
        checked = at_least(joined, self.tokenizer, self.spec.min_output_tokens)
        if isinstance(checked, Dropped):
            return RecordOutcome(filtered=checked.reason.value, calls=calls)
        data = dict(record)
        data[self.output_field] = joined
        # The row's stats are those of the segments it is made of; ``calls`` has them all.
        return RecordOutcome(outputs=[Output(data, [c for _, c in kept])], calls=calls)


def _dominant_reason(verdicts: Sequence[PostResult]) -> str:
    """The most frequent drop reason (the earliest on ties): one label per record."""
    reasons = Counter(v.reason for v in verdicts if isinstance(v, Dropped))
    if not reasons:
        return FilterReason.NO_SEGMENTS.value
    return reasons.most_common(1)[0][0].value


# -- the five tasks ------------------------------------------------------------------


@dataclass
class WikipediaParaphrasingStage(NemotronCCStage):
    """Rewrite (low-quality) web text as Wikipedia-style prose; one row per document."""

    spec: ClassVar[TaskSpec] = TASK_SPECS["wikipedia_paraphrasing"]
    system_prompt: str | None = prompts.SYSTEM_PROMPT
    prompt: str | None = prompts.WIKIPEDIA_PARAPHRASING_PROMPT
    output_field: str = "rephrased"
    name: str = "WikipediaParaphrasing"

    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        assert self.spec.prefix is not None
        return postprocess_paraphrase(
            result.text,
            result.finish_reason,
            tokenizer=self.tokenizer,
            max_tokens=self.spec.truncation_tokens,
            prefix=self.spec.prefix,
            min_tokens=None,  # applies to the re-joined document
        )


@dataclass
class DiverseQAStage(NemotronCCStage):
    """Question/answer pairs about a segment, appended to it (a sampled subset)."""

    spec: ClassVar[TaskSpec] = TASK_SPECS["diverse_qa"]
    system_prompt: str | None = prompts.SYSTEM_PROMPT
    prompt: str | None = prompts.DIVERSE_QA_PROMPT
    output_field: str = "diverse_qa"
    name: str = "DiverseQA"

    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        return postprocess_diverse_qa(
            result.text,
            result.finish_reason,
            segment.text,
            tokenizer=self.tokenizer,
            max_tokens=self.spec.truncation_tokens,
            prefix=self.spec.prefix,
            rng=rng,
            min_tokens=self.spec.min_output_tokens,
        )


@dataclass
class DistillStage(NemotronCCStage):
    """A condensed, faithful paraphrase that keeps terms and examples."""

    spec: ClassVar[TaskSpec] = TASK_SPECS["distill"]
    system_prompt: str | None = prompts.DISTILL_SYSTEM_PROMPT
    prompt: str | None = prompts.DISTILL_PROMPT
    output_field: str = "distill"
    name: str = "Distill"

    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        assert self.spec.prefix is not None
        return postprocess_paraphrase(
            result.text,
            result.finish_reason,
            tokenizer=self.tokenizer,
            max_tokens=self.spec.truncation_tokens,
            prefix=self.spec.prefix,
            min_tokens=self.spec.min_output_tokens,
        )


@dataclass
class ExtractKnowledgeStage(NemotronCCStage):
    """The segment's knowledge rewritten as textbook-style passages."""

    spec: ClassVar[TaskSpec] = TASK_SPECS["extract_knowledge"]
    system_prompt: str | None = prompts.SYSTEM_PROMPT
    prompt: str | None = prompts.EXTRACT_KNOWLEDGE_PROMPT
    output_field: str = "extract_knowledge"
    name: str = "ExtractKnowledge"

    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        return postprocess_extract_knowledge(
            result.text,
            result.finish_reason,
            tokenizer=self.tokenizer,
            max_tokens=self.spec.truncation_tokens,
            min_tokens=self.spec.min_output_tokens,
        )


@dataclass
class KnowledgeListStage(NemotronCCStage):
    """The segment's facts and key concepts as a list, one per line."""

    spec: ClassVar[TaskSpec] = TASK_SPECS["knowledge_list"]
    system_prompt: str | None = prompts.SYSTEM_PROMPT
    prompt: str | None = prompts.KNOWLEDGE_LIST_PROMPT
    output_field: str = "knowledge_list"
    name: str = "KnowledgeList"

    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        return postprocess_knowledge_list(
            result.text,
            result.finish_reason,
            tokenizer=self.tokenizer,
            max_tokens=self.spec.truncation_tokens,
            min_tokens=self.spec.min_output_tokens,
        )


#: Config names of the tasks → their stage classes.
TASKS: dict[str, type[NemotronCCStage]] = {
    "wikipedia_paraphrasing": WikipediaParaphrasingStage,
    "diverse_qa": DiverseQAStage,
    "distill": DistillStage,
    "extract_knowledge": ExtractKnowledgeStage,
    "knowledge_list": KnowledgeListStage,
}


def build_task_stage(
    task: str,
    *,
    client: AsyncLLMClient | LLMClient,
    model_name: str,
    generation_config: GenerationConfig | Mapping[str, Any] | None = None,
    tokenizer: Tokenizer | str | None = None,
    seed: int = 0,
    input_field: str = "text",
    system_prompt: str | None = None,
    prompt: str | None = None,
) -> NemotronCCStage:
    """A task stage from config values.

    ``generation_config`` as a mapping overrides single fields of the task's default
    (so ``{"temperature": 0.7}`` keeps its max_tokens); ``tokenizer`` may be a spec
    string for :func:`load_tokenizer`; ``system_prompt=""`` sends no system message;
    ``None`` for a prompt keeps the task's own.
    """
    try:
        cls = TASKS[task]
    except KeyError:
        raise StageConfigError(
            f"unknown Nemotron-CC task {task!r}; known: {', '.join(TASKS)}"
        ) from None
    overrides: dict[str, Any] = {}
    if system_prompt is not None:
        overrides["system_prompt"] = system_prompt
    if prompt is not None:
        overrides["prompt"] = prompt
    return cls(
        client=client,
        model_name=model_name,
        generation_config=_generation_config(cls.spec, generation_config),
        tokenizer=_tokenizer(tokenizer),
        seed=seed,
        input_field=input_field,
        **overrides,
    )


def _generation_config(
    spec: TaskSpec, config: GenerationConfig | Mapping[str, Any] | None
) -> GenerationConfig:
    if config is None or isinstance(config, GenerationConfig):
        return config or default_generation_config(spec)
    merged = default_generation_config(spec).model_dump() | dict(config)
    try:
        return GenerationConfig.model_validate(merged)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise StageConfigError(f"task {spec.task!r}: invalid generation config: {exc}") from exc


def _tokenizer(tokenizer: Tokenizer | str | None) -> Tokenizer:
    if tokenizer is None:
        return ApproxTokenizer()
    if isinstance(tokenizer, str):
        try:
            return load_tokenizer(tokenizer)
        except (ValueError, RuntimeError) as exc:
            raise StageConfigError(f"tokenizer {tokenizer!r}: {exc}") from exc
    return tokenizer
