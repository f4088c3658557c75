"""The five Nemotron-CC stages end to end, with an in-test LLM client (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streamsynth.engine.batch import DocumentBatch
from streamsynth.engine.errors import MissingColumnError, PostProcessingError, StageConfigError
from streamsynth.engine.stage import ERROR_COLUMN, RecordOutcome
from streamsynth.llm.errors import status_error
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Usage
from streamsynth.stages import TASKS as EXPORTED_TASKS
from streamsynth.stages.nemotron_cc import (
    SEGMENT_INDEX,
    TASK_SPECS,
    TASKS,
    ApproxTokenizer,
    DistillStage,
    DiverseQAStage,
    ExtractKnowledgeStage,
    FilterReason,
    KnowledgeListStage,
    NemotronCCStage,
    WikipediaParaphrasingStage,
    build_task_stage,
    prompts,
)
from streamsynth.stages.synthetic import template_fields

Reply = str | tuple[str, str] | BaseException
Replier = Callable[[str], Reply]


class FakeClient:
    """An AsyncLLMClient whose answer is computed from the segment in the request."""

    def __init__(self, reply: Replier, template: str) -> None:
        self.reply = reply
        self.before, self.after = template.split("{document}")
        self.requests: list[ChatRequest] = []
        self.arrived = asyncio.Event()  # set by the first request
        self.cancelled = 0

    def segment_of(self, request: ChatRequest) -> str:
        content = request.messages[-1]["content"]
        return content[len(self.before) : len(content) - len(self.after)]

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        self.arrived.set()
        segment = self.segment_of(request)
        if "[[wait]]" in segment:  # never answers: only cancellation ends it
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        reply = self.reply(segment)
        if isinstance(reply, BaseException):
            raise reply
        text, finish = reply if isinstance(reply, tuple) else (reply, "stop")
        return ChatResult(
            texts=[text],
            finish_reasons=[finish],
            usage=Usage(len(segment.split()), len(text.split())),
            model=request.model,
            latency_s=0.001,
        )

    async def aclose(self) -> None:
        return None


SENTENCE = (
    "The river town of Eldham grew around a stone bridge built in {year}, and its weekly "
    "market drew wool merchants, millers and travelling craftsmen from nearby valleys."
)


def document(lines: int, start: int = 0) -> str:
    return "\n".join(SENTENCE.format(year=1200 + i) for i in range(start, start + lines))


def head(segment: str, lines: int = 5) -> str:
    """The first lines of a segment: an answer well within every output budget."""
    return "\n".join(segment.split("\n")[:lines])


def good_reply(task: str) -> Replier:
    """A well-formed answer for each task, derived from the segment."""

    def reply(segment: str) -> str:
        if task == "wikipedia_paraphrasing":
            return f'{prompts.WIKIPEDIA_PREFIX}\n"{head(segment).replace("Eldham", "*Eldham*")}"'
        if task == "diverse_qa":
            pairs = (
                f"- Question: What is fact {i}?\n- Answer: Fact {i} is true." for i in range(6)
            )
            return prompts.DIVERSE_QA_PREFIX + "\n" + "\n".join(pairs)
        if task == "distill":
            return f"**{prompts.DISTILL_PREFIX}** {head(segment)}"
        if task == "extract_knowledge":
            return f"Passage 1:\n{head(segment)}"
        return "Here are the facts:\n" + "\n".join(
            f"- {line}" for line in head(segment).split("\n")
        )

    return reply


def make(task: str, reply: Replier, **kwargs: Any) -> tuple[NemotronCCStage, FakeClient]:
    template = str(kwargs.get("prompt") or TASK_SPECS[task].prompt)
    client = FakeClient(reply, template)
    return build_task_stage(task, client=client, model_name="fake-model", **kwargs), client


# -- static shape --------------------------------------------------------------------


def test_stage_names_and_fields_are_distinct() -> None:
    stages = [make(task, good_reply(task))[0] for task in TASKS]
    assert len({s.name for s in stages}) == 5
    assert len({s.output_field for s in stages}) == 5
    assert EXPORTED_TASKS is TASKS
    assert {t: c for t, c in TASKS.items()} == {
        "wikipedia_paraphrasing": WikipediaParaphrasingStage,
        "diverse_qa": DiverseQAStage,
        "distill": DistillStage,
        "extract_knowledge": ExtractKnowledgeStage,
        "knowledge_list": KnowledgeListStage,
    }
    assert [s.output_field for s in stages] == [
        "rephrased", "diverse_qa", "distill", "extract_knowledge", "knowledge_list",
    ]  # fmt: skip


def test_task_budgets() -> None:
    table = {
        task: (s.min_document_tokens, s.min_segment_tokens, s.max_input_tokens,
               s.max_output_tokens, s.truncation_tokens, s.min_output_tokens, s.unit)
        for task, s in TASK_SPECS.items()
    }  # fmt: skip
    assert table == {
        "wikipedia_paraphrasing": (5, 5, 512, 512, 510, 50, "document"),
        "diverse_qa": (30, 30, 1000, 600, 598, 100, "segment"),
        "distill": (30, 10, 2000, 1600, 1598, 50, "segment"),
        "extract_knowledge": (30, 30, 1400, 1400, 1398, 50, "segment"),
        "knowledge_list": (30, 30, 1000, 600, 598, 50, "segment"),
    }


@pytest.mark.parametrize("task", list(TASKS))
def test_default_generation_config(task: str) -> None:
    stage, _ = make(task, good_reply(task))
    # The tutorial's settings: max_tokens 1600 for the high-quality tasks, 512 for Wikipedia.
    max_tokens = 512 if task == "wikipedia_paraphrasing" else 1600
    assert stage.generation_config == GenerationConfig(
        temperature=0.5, top_p=0.9, max_tokens=max_tokens, stop=["</s>"]
    )
    assert isinstance(stage.tokenizer, ApproxTokenizer)


@pytest.mark.parametrize("task", list(TASKS))
def test_prompts_have_one_placeholder_and_the_prefix_line(task: str) -> None:
    stage, _ = make(task, good_reply(task))
    assert stage.prompt is not None
    assert template_fields(stage.prompt) == {"document"}
    assert stage.prompt.count("{document}") == 1
    prefix = TASK_SPECS[task].prefix
    lines = stage.prompt.splitlines()
    if prefix is not None:
        assert f'Start your answer with "{prefix}"' in lines
    else:
        assert "Start your answer with" not in stage.prompt
    expected_system = prompts.DISTILL_SYSTEM_PROMPT if task == "distill" else prompts.SYSTEM_PROMPT
    assert stage.system_prompt == expected_system


def test_task_specific_prompt_wording() -> None:
    assert "Question:" in prompts.DIVERSE_QA_PROMPT and "Answer:" in prompts.DIVERSE_QA_PROMPT
    assert "bulleted list" in prompts.KNOWLEDGE_LIST_PROMPT
    # The simulator picks the answer shape from these words: no other prompt may use them.
    for prompt in (prompts.WIKIPEDIA_PARAPHRASING_PROMPT, prompts.DISTILL_PROMPT,
                   prompts.EXTRACT_KNOWLEDGE_PROMPT, prompts.KNOWLEDGE_LIST_PROMPT):  # fmt: skip
        assert "Question:" not in prompt
    assert "bulleted list" not in prompts.DISTILL_PROMPT


# -- end to end per task -------------------------------------------------------------


async def test_wikipedia_rejoins_segment_outputs_into_one_document_row() -> None:
    stage, client = make("wikipedia_paraphrasing", good_reply("wikipedia_paraphrasing"))
    record = {"id": "doc-1", "text": document(24), "url": "https://example.org"}
    outcome = await stage.aprocess_record(record)
    assert outcome.error is None and outcome.filtered is None
    segments = [client.segment_of(r) for r in client.requests]
    assert len(segments) >= 2  # ~700 tokens over a 512-token budget
    assert "\n".join(segments) == record["text"]
    [output] = outcome.outputs
    # Markdown and wrapping quotes removed, prefix stripped, segments re-joined with "\n".
    assert output.data["rephrased"] == "\n".join(head(s) for s in segments)
    assert output.data["text"] == record["text"] and output.data["url"] == "https://example.org"
    assert SEGMENT_INDEX not in output.data
    assert len(outcome.calls) == len(segments) == len(output.calls)
    assert {m["role"] for r in client.requests for m in r.messages} == {"system", "user"}
    assert all(r.stage == "WikipediaParaphrasing" for r in client.requests)


@pytest.mark.parametrize("task", ["diverse_qa", "distill", "extract_knowledge", "knowledge_list"])
async def test_segment_tasks_emit_one_row_per_segment(task: str) -> None:
    stage, client = make(task, good_reply(task))
    record = {"id": "doc-2", "text": document(70), "lang": "en"}
    outcome = await stage.aprocess_record(record)
    assert outcome.error is None and outcome.filtered is None
    segments = [client.segment_of(r) for r in client.requests]
    assert len(segments) >= 2
    assert [o.data[SEGMENT_INDEX] for o in outcome.outputs] == list(range(len(segments)))
    for output, segment in zip(outcome.outputs, segments, strict=True):
        assert output.data["text"] == segment  # the input field holds the segment
        assert output.data["id"] == "doc-2" and output.data["lang"] == "en"
        assert len(output.calls) == 1
        produced = output.data[stage.output_field]
        if task == "diverse_qa":
            assert produced.startswith(segment + "\n\nQuestion: What is fact ")
            assert prompts.DIVERSE_QA_PREFIX not in produced
        else:
            # Distill: prefix and bold stripped; ExtractKnowledge: "Passage 1:" removed;
            # KnowledgeList: intro line skipped and "- " stripped.
            assert produced == head(segment)
    assert len(outcome.calls) == len(segments)


async def test_batch_api_uses_the_record_path() -> None:
    stage, _ = make("distill", good_reply("distill"))
    batch = DocumentBatch.from_records(
        [{"id": "a", "text": document(3)}, {"id": "b", "text": "too short"}]
    )
    out = await stage.aprocess(batch)
    rows = out.to_records()
    assert [r["id"] for r in rows] == ["a"]  # the filtered record has no row
    assert rows[0]["distill"] == head(document(3)) and rows[0][SEGMENT_INDEX] == 0
    assert rows[0][ERROR_COLUMN] is None and rows[0]["_finish_reason"] == "stop"
    assert stage.outputs() == ["distill", SEGMENT_INDEX]


# -- DiverseQA sampling --------------------------------------------------------------


def many_pairs(segment: str) -> str:
    pairs = "\n".join(f"- Question: Q{i}?\n- Answer: A{i}." for i in range(12))
    return f"{prompts.DIVERSE_QA_PREFIX}\n{pairs}"


async def qa_outputs(stage: NemotronCCStage, records: list[dict[str, Any]]) -> dict[str, str]:
    outcomes = [await stage.aprocess_record(r) for r in records]
    return {
        r["id"]: o.outputs[0].data["diverse_qa"] for r, o in zip(records, outcomes, strict=True)
    }


async def test_qa_sampling_is_seeded_per_record_and_independent_of_order() -> None:
    records = [{"id": f"r{i}", "text": document(8, start=i)} for i in range(6)]
    first = await qa_outputs(make("diverse_qa", many_pairs, seed=3)[0], records)
    again = await qa_outputs(make("diverse_qa", many_pairs, seed=3)[0], records[::-1])
    assert first == again
    other = await qa_outputs(make("diverse_qa", many_pairs, seed=4)[0], records)
    assert other != first
    counts = {text.count("Question:") for text in first.values()}
    assert counts <= set(range(1, 13))


# -- filtering -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\n\t", "Too short."])
async def test_short_documents_are_filtered_without_a_request(text: str) -> None:
    stage, client = make("diverse_qa", good_reply("diverse_qa"))
    outcome = await stage.aprocess_record({"text": text})
    assert outcome.filtered == FilterReason.DOCUMENT_TOO_SHORT.value == "document_too_short"
    assert outcome.outputs == [] and outcome.calls == [] and client.requests == []


async def test_none_text_is_a_short_document() -> None:
    stage, _ = make("distill", good_reply("distill"))
    outcome = await stage.aprocess_record({"text": None})
    assert outcome.filtered == "document_too_short"


async def test_document_of_only_over_budget_lines_has_no_segments() -> None:
    stage, client = make("knowledge_list", good_reply("knowledge_list"))
    one_huge_line = document(40).replace("\n", " ")  # ~1400 tokens > 1000
    outcome = await stage.aprocess_record({"text": one_huge_line})
    assert outcome.filtered == "no_segments" and client.requests == []


@pytest.mark.parametrize(
    ("task", "reply", "reason"),
    [
        ("distill", lambda s: (f"{prompts.DISTILL_PREFIX} {s}", "length"), "truncated"),
        ("knowledge_list", lambda s: ("- " + s, "length"), "truncated"),
        ("distill", lambda s: s, "missing_prefix"),
        (
            "wikipedia_paraphrasing",
            lambda s: f"Sure! {prompts.WIKIPEDIA_PREFIX} {s}",
            "missing_prefix",
        ),
        ("distill", lambda s: f"{prompts.DISTILL_PREFIX} Too short.", "output_too_short"),
        ("extract_knowledge", lambda s: "Passage:\nTiny.", "output_too_short"),
        (
            "wikipedia_paraphrasing",
            lambda s: f"{prompts.WIKIPEDIA_PREFIX} Short.",
            "output_too_short",
        ),
        ("diverse_qa", lambda s: "Sure, here you go:\n- Question: Q?\n- Answer: A.", "no_qa_pairs"),
        ("diverse_qa", lambda s: ("- Question: Q?\n- Answer: A.", "length"), "truncated"),
    ],
)
async def test_every_segment_dropped_filters_the_record(
    task: str, reply: Replier, reason: str
) -> None:
    stage, client = make(task, reply)
    outcome = await stage.aprocess_record({"id": "x", "text": document(8)})
    assert outcome.error is None and outcome.outputs == []
    assert outcome.filtered == reason
    assert reason in {r.value for r in FilterReason}
    # The cost of the dropped segments is still reported.
    assert len(outcome.calls) == len(client.requests) >= 1


async def test_truncated_segment_is_dropped_and_others_kept() -> None:
    def reply(segment: str) -> Reply:
        finish = "length" if "1240" in segment else "stop"
        return (f"{prompts.DISTILL_PREFIX} {head(segment)}", finish)

    stage, client = make("distill", reply)
    outcome = await stage.aprocess_record({"text": document(130)})  # ~4500 tokens: 3 segments
    assert len(client.requests) == 3
    kept = [o.data[SEGMENT_INDEX] for o in outcome.outputs]
    dropped = [i for i, r in enumerate(client.requests) if "1240" in client.segment_of(r)]
    assert dropped and kept == [i for i in range(3) if i not in dropped]
    assert [c.finish_reason for c in outcome.calls].count("length") == 1
    assert all(o.finish_reason == "stop" for o in outcome.outputs)


async def test_wikipedia_drops_bad_segments_but_keeps_the_document() -> None:
    def reply(segment: str) -> Reply:
        if "1203" in segment:
            return segment  # no prefix: this segment is dropped
        return f"{prompts.WIKIPEDIA_PREFIX} {head(segment)}"

    stage, client = make("wikipedia_paraphrasing", reply)
    outcome = await stage.aprocess_record({"text": document(24)})
    segments = [client.segment_of(r) for r in client.requests]
    [output] = outcome.outputs
    assert output.data["rephrased"] == "\n".join(head(s) for s in segments if "1203" not in s)
    assert len(output.calls) == len(segments) - 1 and len(outcome.calls) == len(segments)


# -- failures ------------------------------------------------------------------------


async def test_llm_error_fails_the_whole_record_and_cancels_the_rest() -> None:
    def reply(segment: str) -> Reply:
        if "1210" in segment:
            return status_error(500, "boom")
        return f"{prompts.DISTILL_PREFIX} {head(segment)}"

    stage, client = make("distill", reply)
    text = document(130) + "\n[[wait]] " + document(5).replace("\n", " ")
    outcome = await asyncio.wait_for(stage.aprocess_record({"text": text}), timeout=5)
    assert outcome.outputs == [] and outcome.filtered is None
    assert isinstance(outcome.error, Exception) and "HTTP 500" in str(outcome.error)
    assert client.cancelled == 1  # the hanging request was cancelled, not orphaned
    # Successful siblings and the failed attempt are accounted for.
    assert len(outcome.calls) >= 1 and any(c.completion_tokens == 0 for c in outcome.calls)


async def test_llm_error_in_batch_api_keeps_the_row_with_an_error() -> None:
    stage, _ = make("knowledge_list", lambda s: status_error(503, "unavailable"))
    out = await stage.aprocess(DocumentBatch.from_records([{"id": "a", "text": document(5)}]))
    [row] = out.to_records()
    assert row["id"] == "a" and "503" in row[ERROR_COLUMN] and row["knowledge_list"] is None


async def test_cancelling_the_record_cancels_its_requests() -> None:
    stage, client = make("distill", good_reply("distill"))
    task = asyncio.create_task(stage.aprocess_record({"text": "[[wait]] " + document(5)}))
    await asyncio.wait_for(client.arrived.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.cancelled == 1


class ExplodingTokenizer(ApproxTokenizer):
    def count(self, text: str) -> int:
        if "EXPLODE" in text:
            raise ValueError("cannot count this")
        return super().count(text)


async def test_post_processing_exception_is_wrapped() -> None:
    stage, _ = make("extract_knowledge", lambda s: "EXPLODE " + s, tokenizer=ExplodingTokenizer())
    outcome = await stage.aprocess_record({"text": document(5)})
    assert isinstance(outcome.error, PostProcessingError)
    assert isinstance(outcome.error.__cause__, ValueError)
    assert "segment 0" in str(outcome.error) and len(outcome.calls) == 1


async def test_missing_input_field_is_an_error() -> None:
    stage, client = make("distill", good_reply("distill"))
    outcome = await stage.aprocess_record({"body": document(5)})
    assert isinstance(outcome.error, MissingColumnError) and client.requests == []


# -- configuration -------------------------------------------------------------------


def test_build_task_stage_options() -> None:
    template = "Summarize:\n{document}\n" + prompts.start_with(prompts.DISTILL_PREFIX)
    stage, _ = make(
        "distill",
        good_reply("distill"),
        generation_config={"temperature": 0.9},
        tokenizer="approx",
        seed=9,
        input_field="body",
        system_prompt="",
        prompt=template,
    )
    assert stage.generation_config is not None
    assert stage.generation_config.temperature == 0.9
    assert stage.generation_config.max_tokens == 1600  # the task default is kept
    assert (stage.seed, stage.input_field, stage.prompt) == (9, "body", template)
    assert len(stage.build_messages("doc")) == 1  # "" system prompt: no system message


async def test_input_field_option_is_read_and_replaced() -> None:
    stage, _ = make("distill", good_reply("distill"), input_field="body")
    outcome = await stage.aprocess_record({"body": document(3), "text": "untouched"})
    [output] = outcome.outputs
    assert output.data["distill"] == document(3) and output.data["body"] == document(3)
    assert output.data["text"] == "untouched"


def test_build_task_stage_rejects_bad_config() -> None:
    client = FakeClient(good_reply("distill"), prompts.DISTILL_PROMPT)
    with pytest.raises(StageConfigError, match="unknown Nemotron-CC task"):
        build_task_stage("summarize", client=client, model_name="m")
    with pytest.raises(StageConfigError, match="invalid generation config"):
        build_task_stage("distill", client=client, model_name="m", generation_config={"bogus": 1})
    with pytest.raises(StageConfigError, match="tokenizer"):
        build_task_stage("distill", client=client, model_name="m", tokenizer="wordpiece")
    with pytest.raises(StageConfigError, match="document"):
        build_task_stage("distill", client=client, model_name="m", prompt="no placeholder")


def test_custom_prompt_without_the_prefix_warns(caplog: pytest.LogCaptureFixture) -> None:
    make("distill", good_reply("distill"), prompt="Condense:\n{document}")
    assert "required prefix" in caplog.text


def test_outcome_type() -> None:
    # Guards the contract the worker relies on.
    assert RecordOutcome().ok


# -- tasks as data, fidelity options -------------------------------------------------


def test_tasks_derive_from_the_registry() -> None:
    from streamsynth.config import TASK_CHOICES
    from streamsynth.stages.nemotron_cc import TASK_NAMES

    assert tuple(TASKS) == tuple(TASK_SPECS) == TASK_NAMES
    assert (*TASK_NAMES, "custom") == TASK_CHOICES
    for task, cls in TASKS.items():
        assert cls.__name__ == TASK_SPECS[task].class_name  # Curator's class names
        assert cls.spec is TASK_SPECS[task]
        # The class carries its spec and nothing else.
        assert {k for k in vars(cls) if not k.startswith("_")} == {"spec"}
        stage, _ = make(task, good_reply(task))
        assert (stage.name, stage.output_field) == (cls.spec.stage_name, cls.spec.output_field)


@pytest.mark.parametrize("task", list(TASKS))
def test_segment_budget_leaves_room_for_the_prompt(task: str) -> None:
    spec = TASK_SPECS[task]
    stage, _ = make(task, good_reply(task))
    prompt_tokens = stage.tokenizer.count(f"{spec.system_prompt}\n{spec.prompt}")
    assert stage.segment_budget == spec.max_input_tokens - prompt_tokens - 2
    pre = stage.preprocess(document(200))
    assert len(pre.segments) >= 3
    for segment in pre.segments:
        assert segment.tokens <= stage.segment_budget
        sent = f"{spec.system_prompt}\n{spec.prompt.replace('{document}', segment.text)}"
        assert stage.tokenizer.count(sent) <= spec.max_input_tokens


def test_a_prompt_that_leaves_no_room_is_a_config_error() -> None:
    huge = "Summarize. " * 600 + "{document}"
    with pytest.raises(StageConfigError, match="leaves"):
        make("knowledge_list", good_reply("knowledge_list"), prompt=huge)


def test_curator_compat_selects_the_fixes() -> None:
    from streamsynth.stages.nemotron_cc import ALL_FIXES, Fix

    exact, _ = make("distill", good_reply("distill"), curator_compat="exact")
    fixes, _ = make("distill", good_reply("distill"))
    assert exact.fixes == frozenset() and fixes.fixes == ALL_FIXES
    assert exact.generation_config is not None and exact.generation_config.stop == ["['</s>']"]
    assert Fix.STOP_LIST in fixes.fixes
    with pytest.raises(StageConfigError, match="curator_compat"):
        make("distill", good_reply("distill"), curator_compat="bogus")


def test_name_option_is_passed_in() -> None:
    stage, _ = make("distill", good_reply("distill"), name="my-distill")
    assert stage.name == "my-distill"


async def test_id_field_drives_diverse_qa_sampling_seed() -> None:
    stage, _ = make("diverse_qa", many_pairs, id_field="doc_id")
    text = document(8)
    # Same doc_id, different "id": the same sample; another doc_id: another sample.
    records = [
        {"doc_id": "d1", "id": "x", "text": text},
        {"doc_id": "d1", "id": "y", "text": text},
        *({"doc_id": f"d{i}", "id": "x", "text": text} for i in range(2, 12)),
    ]
    outputs = [(await stage.aprocess_record(r)).outputs[0].data["diverse_qa"] for r in records]
    assert outputs[0] == outputs[1]
    assert len(set(outputs[1:])) > 1
    first = stage.record_rng(records[0], text).random()
    assert stage.record_rng(records[1], text).random() == first
    assert stage.record_rng({"id": "x", "text": text}, text).random() != first  # no doc_id: text


def test_config_keys_and_errors_name_the_field() -> None:
    from streamsynth.config import ConfigError, settings_from_dict

    def config(**stage: Any) -> dict[str, Any]:
        base = {"task": "distill", "output_topic": "out", **stage}
        return {
            "kafka": {"bootstrap_servers": "127.0.0.1:9092", "input_topic": "in", "dlq_topic": "d"},
            "llm": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"},
            "stages": [base],
        }

    [stage] = settings_from_dict(config()).stages
    assert (stage.curator_compat, stage.count_special_tokens) == ("fixes", None)
    [stage] = settings_from_dict(config(curator_compat="exact", count_special_tokens=False)).stages
    assert (stage.curator_compat, stage.count_special_tokens) == ("exact", False)
    with pytest.raises(ConfigError, match=r"stages\.0\.curator_compat"):
        settings_from_dict(config(curator_compat="bit-for-bit"))
    with pytest.raises(ConfigError, match=r"stages\.0\.task.*unknown task 'summarize'"):
        settings_from_dict(config(task="summarize"))


def test_guard_and_truncation_options_are_forwarded() -> None:
    stage, _ = make(
        "distill", good_reply("distill"), context_tokens=4096, min_output_tokens=64,
        on_truncated="dlq",
    )  # fmt: skip
    assert (stage.context_tokens, stage.min_output_tokens, stage.on_truncated) == (4096, 64, "dlq")
    default, _ = make("distill", good_reply("distill"))
    assert (default.context_tokens, default.on_truncated) == (None, None)
