"""Runs inside the NeMo Curator 1.4.0 venv: the Nemotron-CC tutorial chain, rebuilt.

The tutorial (``tutorials/synthetic/nemotron_cc/nemotron_cc_pipelines.py`` in
NVIDIA-NeMo/Curator) is not in the wheel, so its chain is rebuilt here from the
wheel's own stage classes, in the tutorial's order and with its settings:

* pre-processing: ScoreFilter(TokenCountFilter(min_document_tokens)) →
  DocumentSplitter("\\n") → ScoreFilter(TokenCountFilter(max=segment budget)) →
  DocumentJoiner(max_length=budget) → Filter(segment tokens >= min_segment_tokens),
  the budget being max_input_tokens - tokens(system + "\\n" + template) - 2;
* the task's own stage class (with a canned LLM client);
* post-processing: TokenCountFilter(max=budget-2) → MarkdownRemover → the task's
  steps (prefix filter + Slicer + QuotationRemover; LineRemover; the DiverseQA and
  KnowledgeList post-processing stages; Wikipedia's re-join) → TokenCountFilter(min).

Reads a JSON job on stdin, writes per-case results as JSON on stdout. Each document
is its own batch, so a row's fate is read from which stage removed it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import types
from typing import Any


def install_stubs() -> None:
    """The ray-bound imports the benchmark stubs, plus ``NodeInfo`` for the filters."""
    sys.path.insert(0, sys.argv[1])  # the repository root, for benchmarks/
    from benchmarks.bench_vs_curator import _install_stubs

    _install_stubs()

    @dataclasses.dataclass
    class NodeInfo:
        node_id: str = ""

    base = sys.modules["nemo_curator.backends.base"]
    assert isinstance(base, types.ModuleType)
    base.NodeInfo = NodeInfo  # type: ignore[attr-defined]


install_stubs()

import pandas as pd  # noqa: E402
from loguru import logger  # noqa: E402
from nemo_curator.models.client.llm_client import LLMClient  # noqa: E402
from nemo_curator.stages.synthetic.nemotron_cc import nemotron_cc  # noqa: E402
from nemo_curator.stages.text.filters import Filter, ScoreFilter  # noqa: E402
from nemo_curator.stages.text.filters.heuristic import SubstringFilter  # noqa: E402
from nemo_curator.stages.text.filters.token import TokenCountFilter  # noqa: E402
from nemo_curator.stages.text.modifiers import Modify  # noqa: E402
from nemo_curator.stages.text.modifiers.string import (  # noqa: E402
    LineRemover,
    MarkdownRemover,
    QuotationRemover,
    Slicer,
)
from nemo_curator.stages.text.modules.joiner import DocumentJoiner  # noqa: E402
from nemo_curator.stages.text.modules.splitter import DocumentSplitter  # noqa: E402
from nemo_curator.tasks import DocumentBatch  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

logger.remove()  # Curator logs every emptied batch


class CannedClient(LLMClient):  # type: ignore[misc]
    """Answers each user prompt with the text the test gave for that segment."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, str] = {}

    def setup(self) -> None:
        return None

    def query_model(self, *, messages: Any, model: str, **_: Any) -> list[str]:
        return [self.answers[messages[-1]["content"]]]


def preprocessing(tokenizer: Any, task: dict[str, Any]) -> list[tuple[str, Any]]:
    prefix = f"{task['system_prompt']}\n{task['prompt'].replace('{text}', '')}"
    budget = task["max_input_tokens"] - len(tokenizer.encode(prefix)) - 2
    count = TokenCountFilter  # the tutorial's token filter, with a loaded tokenizer
    return [
        ("document_too_short", ScoreFilter(count(tokenizer=tokenizer, min_tokens=task["min_document_tokens"]), text_field="text", score_field="document_token_count")),  # noqa: E501
        ("", DocumentSplitter(separator="\n", text_field="text", segment_id_field="segment_id")),
        ("", ScoreFilter(count(tokenizer=tokenizer, max_tokens=budget), text_field="text", score_field="segment_token_count")),  # noqa: E501
        ("", DocumentJoiner(separator="\n", text_field="text", segment_id_field="segment_id", document_id_field="id", max_length=budget, length_field="segment_token_count", drop_segment_id_field=False)),  # noqa: E501
        ("", Filter(filter_fn=lambda x: x >= task["min_segment_tokens"], filter_field="segment_token_count")),  # noqa: E501
    ]  # fmt: skip


def postprocessing(tokenizer: Any, name: str, task: dict[str, Any]) -> list[tuple[str, Any]]:
    field, prefix = task["output_field"], task["prefix"]
    steps: list[tuple[str, Any]] = [
        ("truncated", ScoreFilter(TokenCountFilter(tokenizer=tokenizer, max_tokens=task["truncation_tokens"]), text_field=field, score_field="rephrased_segment_token_count")),  # noqa: E501
        ("", Modify(modifier_fn=MarkdownRemover(), input_fields=field)),
    ]  # fmt: skip
    if name in ("wikipedia_paraphrasing", "distill"):
        steps += [
            ("missing_prefix", ScoreFilter(SubstringFilter(substring=prefix, position="prefix"), text_field=field, score_field="substring")),  # noqa: E501
            ("", Modify(modifier_fn=Slicer(left=prefix, include_left=False, strip=True), input_fields=field)),  # noqa: E501
            ("", Modify(modifier_fn=QuotationRemover(), input_fields=field)),
        ]  # fmt: skip
    if name == "wikipedia_paraphrasing":
        steps.append(
            (
                "",
                DocumentJoiner(
                    separator="\n",
                    text_field=field,
                    segment_id_field="segment_id",
                    document_id_field="id",
                    drop_segment_id_field=False,
                ),
            )
        )
    if name == "extract_knowledge":
        patterns = ["Passage:", "Passage 1:", "Passage 2:", "Passage 3:"]
        steps.append(("", Modify(modifier_fn=LineRemover(patterns=patterns), input_fields=field)))
    if name == "diverse_qa":
        steps.append(
            (
                "qa",
                nemotron_cc.DiverseQAPostProcessingStage(
                    input_field="text", qa_field=field, tokenizer=tokenizer
                ),
            )
        )
    if name == "knowledge_list":
        steps.append(("", nemotron_cc.KnowledgeListPostProcessingStage(input_field=field)))
    steps.append(
        (
            "output_too_short",
            ScoreFilter(
                TokenCountFilter(tokenizer=tokenizer, min_tokens=task["min_output_tokens"]),
                text_field=field,
                score_field="rephrased_document_token_count",
            ),
        )
    )
    return steps


def run_steps(
    df: pd.DataFrame, steps: list[tuple[str, Any]], case: dict[str, Any]
) -> tuple[pd.DataFrame, dict[int, str]]:
    """Every step on a one-document batch; which segment each labelled step removed."""
    removed: dict[int, str] = {}
    for label, stage in steps:
        if df.empty:
            break
        stage.setup()
        if label == "qa" and case.get("rng_state") is not None:
            version, internal, gauss = case["rng_state"]
            random.setstate((version, tuple(internal), gauss))
        # Before the split, the one row is the document (id -1).
        before = set(df["segment_id"]) if "segment_id" in df else {-1}
        df = stage.process(DocumentBatch(dataset_name="fidelity", data=df)).to_pandas()
        after = set(df["segment_id"]) if "segment_id" in df else ({-1} if len(df) else set())
        if label == "qa":  # Curator marks a failed parse with ""; the min filter drops it
            for seg, out in zip(df["segment_id"], df[case["field"]], strict=True):
                if out == "":
                    removed[int(seg)] = "no_qa_pairs"
        elif label:
            for seg in before - after:
                removed.setdefault(int(seg), label)
    return df, removed


def run_case(tokenizer: Any, job: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    name = case["task"]
    task = job["tasks"][name]
    case = {**case, "field": task["output_field"]}
    df = pd.DataFrame([{"id": case["id"], "text": case["text"]}])
    df, removed = run_steps(df, preprocessing(tokenizer, task), case)
    if removed or df.empty:
        return {"filtered": "document_too_short" if removed else "no_segments"}
    df = df.sort_values("segment_id").reset_index(drop=True)
    segments = [[t, int(n)] for t, n in zip(df["text"], df["segment_token_count"], strict=True)]
    client = CannedClient()
    for i, text in enumerate(df["text"]):
        client.answers[task["prompt"].format(document=text)] = case["answers"][
            i % len(case["answers"])
        ]
    stage_cls = getattr(nemotron_cc, task["class_name"])
    stage = stage_cls(
        client=client,
        model_name="canned",
        system_prompt=task["system_prompt"],
        prompt=task["prompt"],
    )
    stage.setup()
    df = stage.process(DocumentBatch(dataset_name="fidelity", data=df)).to_pandas()
    ids = list(df["segment_id"])
    df, removed = run_steps(df, postprocessing(tokenizer, name, task), case)
    verdicts = [removed.get(int(s), "kept") for s in ids]
    if name == "wikipedia_paraphrasing":
        kept = not df.empty
        if not kept and "output_too_short" in verdicts:  # the document-level minimum
            verdicts = [("kept" if v == "output_too_short" else v) for v in verdicts]
        return {
            "segments": segments,
            "verdicts": verdicts,
            "document": str(df[task["output_field"]].iloc[0]) if kept else None,
        }
    rows = [[t, o] for t, o in zip(df["text"], df[task["output_field"]], strict=True)]
    return {"segments": segments, "verdicts": verdicts, "rows": rows}


def main() -> None:
    job = json.load(sys.stdin)
    results: dict[str, Any] = {}
    for label, path in job["tokenizers"].items():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=path)
        results[label] = [run_case(tokenizer, job, case) for case in job["cases"][label]]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
