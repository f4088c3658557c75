"""Config entries -> stage objects (streamsynth.stages.factory), no LLM call needed."""

from __future__ import annotations

from typing import Any

from streamsynth.config import Settings, settings_from_dict
from streamsynth.llm.types import ChatRequest, ChatResult
from streamsynth.stages.factory import build_stages
from streamsynth.stages.nemotron_cc import (
    DiverseQAStage,
    KnowledgeListStage,
    WikipediaParaphrasingStage,
)
from streamsynth.stages.synthetic import SyntheticStage


class _NoCalls:
    """A client the factory may hold but never call."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        raise AssertionError("the factory must not call the LLM")


def _settings(*stages: dict[str, Any]) -> Settings:
    return settings_from_dict(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "input_topic": "in", "dlq_topic": "d"},
            "record": {"id_field": "doc_id", "text_field": "body"},
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "default-model"},
            "stages": list(stages),
        }
    )


def test_each_entry_becomes_its_stage_with_config_values_passed_in() -> None:
    settings = _settings(
        {"task": "custom", "name": "sum", "prompt": "Sum: {document}", "output_field": "summary",
         "output_topic": "o1", "model": "other-model", "generation": {"temperature": 0.2}},
        {"task": "diverse_qa", "name": "qa", "output_topic": "o2", "seed": 7},
        {"task": "knowledge_list", "output_topic": "o3", "input_field": "abstract"},
        {"task": "wikipedia_paraphrasing", "output_topic": "o4"},
    )  # fmt: skip
    custom, qa, klist, wiki = build_stages(settings, _NoCalls())  # type: ignore[arg-type]

    assert [b.name for b in (custom, qa, klist, wiki)] == [
        "sum", "qa", "knowledge_list", "wikipedia_paraphrasing"
    ]  # fmt: skip
    assert isinstance(custom.stage, SyntheticStage) and not custom.segmented
    assert custom.stage.name == "sum" and custom.stage.output_field == "summary"
    assert custom.stage.input_field == "body"  # record.text_field when the entry sets none
    assert custom.stage.model_name == "other-model"
    assert custom.stage.generation_config is not None
    assert custom.stage.generation_config.temperature == 0.2

    assert isinstance(qa.stage, DiverseQAStage) and qa.segmented  # a segment-unit task
    assert qa.stage.name == "qa"  # given to the constructor, so __post_init__ saw it
    assert qa.stage.id_field == "doc_id" and qa.stage.seed == 7
    assert qa.stage.model_name == "default-model"

    assert isinstance(klist.stage, KnowledgeListStage) and klist.segmented
    assert klist.stage.name == "knowledge_list" and klist.stage.input_field == "abstract"
    assert klist.config.output_topic == "o3"
    assert isinstance(wiki.stage, WikipediaParaphrasingStage) and not wiki.segmented
