"""The five Nemotron-CC tasks as record stages, from one registry (:data:`TASK_SPECS`).

Each task is data: a :class:`TaskSpec` (prompts, token budgets, post-processing
chain, the tutorial's sampling). The five classes keep NeMo Curator's names and
carry only their spec; :data:`TASKS` and the config's task names derive from it.

Each stage turns one document into segments (``preprocess``), sends one LLM request
per segment concurrently, post-processes every answer (``postprocess_answer``, with
the per-record ``record_rng``) and emits:

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
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from streamsynth.engine.errors import PostProcessingError, StageConfigError
from streamsynth.engine.stage import LLMCall, Output, RecordOutcome
from streamsynth.llm.client import AsyncLLMClient, LLMClient
from streamsynth.llm.types import ChatResult, GenerationConfig
from streamsynth.stages.nemotron_cc import prompts
from streamsynth.stages.nemotron_cc.compat import ALL_FIXES, CuratorCompat, Fix, fixes_for
from streamsynth.stages.nemotron_cc.postprocess import (
    Dropped,
    PostResult,
    Rules,
    TaskPostprocess,
    at_least,
    diverse_qa_chain,
    extract_knowledge_chain,
    knowledge_list_chain,
    paraphrase_chain,
    rejoin_segments,
)
from streamsynth.stages.nemotron_cc.preprocess import (
    FilterReason,
    Preprocessed,
    Segment,
    preprocess_document,
    segment_budget,
)
from streamsynth.stages.nemotron_cc.tokenizer import ApproxTokenizer, Tokenizer, load_tokenizer
from streamsynth.stages.synthetic import SyntheticStage, call_of, calls_of_error

logger = logging.getLogger(__name__)

#: The column that numbers a segment-unit task's output rows within their document.
SEGMENT_INDEX = "segment_index"


@dataclass(frozen=True, slots=True)
class Sampling:
    """The generation settings of NeMo Curator's tutorial for one task."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]


# The tutorial's sampling: temperature 0.5, top_p 0.9; max_tokens 1600 for the four
# high-quality tasks (its GENERATION_CONFIG, not the per-task output budgets, which it
# declares but never uses) and 512 for Wikipedia (the low-quality script). Its stop
# list is the literal string "['</s>']"; ``fixes`` sends the list it means.
_HQ = Sampling(temperature=0.5, top_p=0.9, max_tokens=1600, stop=("</s>",))
_LQ = Sampling(temperature=0.5, top_p=0.9, max_tokens=512, stop=("</s>",))
#: The stop string exactly as the tutorial sends it (``curator_compat: exact``).
TUTORIAL_STOP = "['</s>']"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """One Nemotron-CC task as data: prompts, budgets (tokens), post-processing, sampling.

    ``max_input_tokens`` bounds prompt + segment (the segment budget is what the
    prompt leaves of it, :func:`segment_budget`); ``truncation_tokens`` (the output
    budget minus 2) is the longest answer not treated as truncated;
    ``min_output_tokens`` applies to each kept output (to the re-joined document for
    a ``document``-unit task). ``class_name`` and ``stage_name`` are NeMo Curator's
    class and stage ``name`` for the task.
    """

    task: str
    class_name: str
    stage_name: str
    prompt: str
    output_field: str
    max_input_tokens: int
    max_output_tokens: int
    postprocess: TaskPostprocess
    min_output_tokens: int = 50
    min_document_tokens: int = 30
    min_segment_tokens: int = 30
    system_prompt: str = prompts.SYSTEM_PROMPT
    prefix: str | None = None
    unit: Literal["document", "segment"] = "segment"
    sampling: Sampling = _HQ
    max_document_tokens: int | None = None

    @property
    def truncation_tokens(self) -> int:
        """The longest answer not treated as truncated: the output budget minus 2."""
        return self.max_output_tokens - 2


# Token budgets as NeMo Curator's Nemotron-CC tutorial configures them; every truncation
# threshold is the output budget minus 2.
TASK_SPECS: dict[str, TaskSpec] = {
    spec.task: spec
    for spec in (
        TaskSpec(
            task="wikipedia_paraphrasing",
            class_name="WikipediaParaphrasingStage",
            stage_name="WikipediaParaphrasing",
            prompt=prompts.WIKIPEDIA_PARAPHRASING_PROMPT,
            output_field="rephrased",
            min_document_tokens=5,
            min_segment_tokens=5,
            max_input_tokens=512,
            max_output_tokens=512,
            prefix=prompts.WIKIPEDIA_PREFIX,
            unit="document",
            postprocess=paraphrase_chain,
            sampling=_LQ,
        ),
        TaskSpec(
            task="diverse_qa",
            class_name="DiverseQAStage",
            stage_name="DiverseQA",
            prompt=prompts.DIVERSE_QA_PROMPT,
            output_field="diverse_qa",
            max_input_tokens=1000,
            max_output_tokens=600,
            min_output_tokens=100,
            prefix=prompts.DIVERSE_QA_PREFIX,
            postprocess=diverse_qa_chain,
        ),
        TaskSpec(
            task="distill",
            class_name="DistillStage",
            stage_name="Distill",
            system_prompt=prompts.DISTILL_SYSTEM_PROMPT,
            prompt=prompts.DISTILL_PROMPT,
            output_field="distill",
            min_segment_tokens=10,
            max_input_tokens=2000,
            max_output_tokens=1600,
            prefix=prompts.DISTILL_PREFIX,
            postprocess=paraphrase_chain,
        ),
        TaskSpec(
            task="extract_knowledge",
            class_name="ExtractKnowledgeStage",
            stage_name="ExtractKnowledge",
            prompt=prompts.EXTRACT_KNOWLEDGE_PROMPT,
            output_field="extract_knowledge",
            max_input_tokens=1400,
            max_output_tokens=1400,
            postprocess=extract_knowledge_chain,
        ),
        TaskSpec(
            task="knowledge_list",
            class_name="KnowledgeListStage",
            stage_name="KnowledgeList",
            prompt=prompts.KNOWLEDGE_LIST_PROMPT,
            output_field="knowledge_list",
            max_input_tokens=1000,
            max_output_tokens=600,
            postprocess=knowledge_list_chain,
        ),
    )
}
#: The task names, in the tutorial's order: the config's ``task`` values (and "custom").
TASK_NAMES: tuple[str, ...] = tuple(TASK_SPECS)


def default_generation_config(
    spec: TaskSpec, fixes: Collection[Fix] = ALL_FIXES
) -> GenerationConfig:
    """The tutorial's sampling for ``spec`` (without the ``stop_list`` fix: its stop
    string exactly as it sends it)."""
    sampling = spec.sampling
    stop = list(sampling.stop) if Fix.STOP_LIST in fixes else [TUTORIAL_STOP]
    return GenerationConfig(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        stop=stop,
    )


@dataclass(slots=True)
class _Generation:
    """The answers to a document's segments (all of them unless ``error`` is set)."""

    results: list[ChatResult]
    calls: list[LLMCall]
    error: BaseException | None = None


@dataclass
class NemotronCCStage(SyntheticStage):
    """Base of the five tasks: segmenting, per-segment requests, post-processing.

    Everything task-specific comes from the class's :class:`TaskSpec`; unset prompts,
    output field and name take the spec's. ``fixes`` is what ``curator_compat``
    selects (:func:`~streamsynth.stages.nemotron_cc.compat.fixes_for`).
    """

    spec: ClassVar[TaskSpec]

    output_field: str = ""
    name: str = ""
    tokenizer: Tokenizer = field(default_factory=ApproxTokenizer)
    #: Seeds DiverseQA's pair sampling, per record, from this and the record's id/text.
    seed: int = 0
    #: The record field whose value identifies a document (``record.id_field``).
    id_field: str = "id"
    fixes: frozenset[Fix] = ALL_FIXES
    #: The largest segment: what the prompt leaves of the task's ``max_input_tokens``.
    segment_budget: int = field(init=False, default=0)
    rules: Rules = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if self.system_prompt is None:
            self.system_prompt = spec.system_prompt
        if self.prompt is None:
            self.prompt = spec.prompt
        self.output_field = self.output_field or spec.output_field
        self.name = self.name or spec.stage_name
        self.fixes = frozenset(self.fixes)
        if self.generation_config is None:
            self.generation_config = default_generation_config(spec, self.fixes)
        super().__post_init__()
        self.segment_budget = segment_budget(
            spec.max_input_tokens, self.tokenizer, self.system_prompt, self.prompt
        )
        if self.segment_budget < spec.min_segment_tokens:
            raise StageConfigError(
                f"stage {self.name!r}: the prompt leaves {self.segment_budget} of "
                f"{spec.max_input_tokens} input tokens for a segment, under the task's "
                f"minimum segment of {spec.min_segment_tokens}"
            )
        self.rules = Rules(
            tokenizer=self.tokenizer,
            max_tokens=spec.truncation_tokens,
            min_tokens=None if spec.unit == "document" else spec.min_output_tokens,
            prefix=spec.prefix,
            fixes=self.fixes,
        )
        prefix = spec.prefix
        if prefix is not None and self.prompt is not None and prefix not in self.prompt:
            # Every answer without the prefix is dropped: a custom prompt must ask for it.
            logger.warning(
                "stage %s: the prompt does not mention the required prefix %r", self.name, prefix
            )

    def outputs(self) -> list[str]:
        if self.spec.unit == "segment":
            return [self.output_field, SEGMENT_INDEX]
        return [self.output_field]

    # -- the three steps (public: what a user debugging a drop calls) --------------------
    def preprocess(self, document: str) -> Preprocessed:
        """The segments ``document`` is sent as, or why it has none."""
        return preprocess_document(
            document,
            self.tokenizer,
            min_document_tokens=self.spec.min_document_tokens,
            max_document_tokens=self.spec.max_document_tokens,
            max_segment_tokens=self.segment_budget,
            min_segment_tokens=self.spec.min_segment_tokens,
            drop_blank_segments=Fix.BLANK_SEGMENT in self.fixes,
        )

    def postprocess_answer(
        self, segment: Segment, result: ChatResult, rng: random.Random
    ) -> PostResult:
        """The kept text for one segment's answer, or why it is dropped."""
        return self.spec.postprocess(
            result.text, result.finish_reason, segment.text, self.rules, rng
        )

    def record_rng(self, record: Mapping[str, Any], document: str) -> random.Random:
        """A RNG that depends only on ``seed`` and the record's ``id_field`` (its text
        when it has no id), not on processing order."""
        key = record.get(self.id_field)
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
        checked = at_least(joined, self.tokenizer, self.spec.min_output_tokens, fixes=self.fixes)
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


# -- the five tasks: NeMo Curator's class names, everything else in TASK_SPECS --------


class WikipediaParaphrasingStage(NemotronCCStage):
    """Rewrite (low-quality) web text as Wikipedia-style prose; one row per document."""

    spec = TASK_SPECS["wikipedia_paraphrasing"]


class DiverseQAStage(NemotronCCStage):
    """Question/answer pairs about a segment, appended to it (a sampled subset)."""

    spec = TASK_SPECS["diverse_qa"]


class DistillStage(NemotronCCStage):
    """A condensed, faithful paraphrase that keeps terms and examples."""

    spec = TASK_SPECS["distill"]


class ExtractKnowledgeStage(NemotronCCStage):
    """The segment's knowledge rewritten as textbook-style passages."""

    spec = TASK_SPECS["extract_knowledge"]


class KnowledgeListStage(NemotronCCStage):
    """The segment's facts and key concepts as a list, one per line."""

    spec = TASK_SPECS["knowledge_list"]


#: Config names of the tasks → their stage classes (the registry's order).
TASKS: dict[str, type[NemotronCCStage]] = {
    cls.spec.task: cls
    for cls in (
        WikipediaParaphrasingStage,
        DiverseQAStage,
        DistillStage,
        ExtractKnowledgeStage,
        KnowledgeListStage,
    )
}
assert tuple(TASKS) == TASK_NAMES and all(
    cls.__name__ == cls.spec.class_name for cls in TASKS.values()
)


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
    curator_compat: CuratorCompat = "fixes",
    name: str | None = None,
    id_field: str = "id",
    count_special_tokens: bool | None = None,
    context_tokens: int | None = None,
    min_output_tokens: int | None = None,
    on_truncated: Literal["filter", "dlq"] | None = None,
) -> NemotronCCStage:
    """A task stage from config values.

    ``generation_config`` as a mapping overrides single fields of the task's default
    (so ``{"temperature": 0.7}`` keeps its max_tokens); ``tokenizer`` may be a spec
    string for :func:`load_tokenizer` (``count_special_tokens``: None follows the
    tokenizer's own default, as Curator does); ``system_prompt=""`` sends no system
    message; ``None`` for a prompt or name keeps the task's own. ``curator_compat``:
    ``"exact"`` reproduces NeMo Curator 1.4.0 bit for bit, ``"fixes"`` applies the
    documented fixes (:class:`~streamsynth.stages.nemotron_cc.compat.Fix`).
    ``id_field`` names the record's id (it seeds DiverseQA's sampling).
    ``context_tokens``, ``min_output_tokens`` and ``on_truncated`` are
    :class:`SyntheticStage`'s context guard and truncation handling (None: its
    defaults; ``filter`` and None keep the task's own truncation filter).
    """
    try:
        cls = TASKS[task]
    except KeyError:
        raise StageConfigError(
            f"unknown Nemotron-CC task {task!r}; known: {', '.join(TASKS)}"
        ) from None
    try:
        fixes = fixes_for(curator_compat)
    except ValueError as exc:
        raise StageConfigError(f"task {task!r}: {exc}") from None
    overrides: dict[str, Any] = {}
    if system_prompt is not None:
        overrides["system_prompt"] = system_prompt
    if prompt is not None:
        overrides["prompt"] = prompt
    if name is not None:
        overrides["name"] = name
    if min_output_tokens is not None:
        overrides["min_output_tokens"] = min_output_tokens
    return cls(
        client=client,
        model_name=model_name,
        generation_config=_generation_config(cls.spec, generation_config, fixes),
        tokenizer=_tokenizer(tokenizer, count_special_tokens),
        seed=seed,
        input_field=input_field,
        id_field=id_field,
        fixes=fixes,
        context_tokens=context_tokens,
        on_truncated=on_truncated,
        **overrides,
    )


def _generation_config(
    spec: TaskSpec, config: GenerationConfig | Mapping[str, Any] | None, fixes: frozenset[Fix]
) -> GenerationConfig:
    if config is None or isinstance(config, GenerationConfig):
        return config or default_generation_config(spec, fixes)
    merged = default_generation_config(spec, fixes).model_dump() | dict(config)
    try:
        return GenerationConfig.model_validate(merged)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise StageConfigError(f"task {spec.task!r}: invalid generation config: {exc}") from exc


def _tokenizer(tokenizer: Tokenizer | str | None, special_tokens: bool | None) -> Tokenizer:
    if tokenizer is None:
        return ApproxTokenizer()
    if isinstance(tokenizer, str):
        try:
            return load_tokenizer(tokenizer, special_tokens=special_tokens)
        except (ValueError, RuntimeError) as exc:
            raise StageConfigError(f"tokenizer {tokenizer!r}: {exc}") from exc
    return tokenizer
