"""Configuration -> stages: the one place a ``stages:`` entry becomes a stage object.

Every value a stage needs is passed to its constructor (its name included); nothing
is patched after construction. All stages share one LLM client, so one global
concurrency bound holds across them. Kafka knows nothing of this module's inner
workings: it takes the :class:`BuiltStage` list and adds topics and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamsynth.config import Settings, StageSettings
    from streamsynth.engine.stage import RecordStage
    from streamsynth.llm.client import AsyncLLMClient, LLMClient


@dataclass(frozen=True, slots=True)
class BuiltStage:
    """A configured stage and the facts about it that its consumers need."""

    config: StageSettings
    stage: RecordStage
    #: One output row per segment of the document (Nemotron-CC's segment-unit tasks).
    segmented: bool = False

    @property
    def name(self) -> str:
        return self.config.stage_name

    @property
    def output_field(self) -> str | None:
        """The column this stage writes (what a stage chained on it reads by default)."""
        outputs = self.stage.outputs()
        return outputs[0] if outputs else None


def build_stages(settings: Settings, client: AsyncLLMClient | LLMClient) -> list[BuiltStage]:
    """The configured stages, in config order, sharing ``client``.

    They are built upstream first: a stage chained by ``input_from`` reads its
    upstream's output field unless it sets ``input_field``.
    """
    graph = settings.stage_graph()
    configs = {cfg.stage_name: cfg for cfg in settings.stages}
    _set_priorities(settings, client)
    built: dict[str, BuiltStage] = {}
    for name in graph.order:
        upstream = graph.upstream_of(name)
        reads = built[upstream].output_field if upstream is not None else None
        built[name] = build_stage(settings, configs[name], client, default_input=reads)
    return [built[cfg.stage_name] for cfg in settings.stages]


def _set_priorities(settings: Settings, client: AsyncLLMClient | LLMClient) -> None:
    """Each stage's ``priority`` orders its requests in the queues of the shared client."""
    from streamsynth.llm.resilient import ResilientClient

    if isinstance(client, ResilientClient):
        for cfg in settings.stages:
            client.set_stage_priority(cfg.stage_name, cfg.priority)


def build_stage(
    settings: Settings,
    cfg: StageSettings,
    client: AsyncLLMClient | LLMClient,
    *,
    default_input: str | None = None,
) -> BuiltStage:
    """One stage from its config entry (``settings`` gives the defaults it leaves unset).

    ``default_input`` is the input field when the entry sets none (else the record's
    text field): the upstream's output field for a chained stage.
    """
    if cfg.input_field is None and default_input is not None:
        cfg = cfg.model_copy(update={"input_field": default_input})
    if cfg.task == "custom":
        return BuiltStage(cfg, _custom_stage(settings, cfg, client))
    return _task_stage(settings, cfg, client)


def _custom_stage(
    settings: Settings, cfg: StageSettings, client: AsyncLLMClient | LLMClient
) -> RecordStage:
    """A :class:`~streamsynth.stages.synthetic.SyntheticStage` from a ``task: custom`` entry."""
    from streamsynth.engine.errors import StageConfigError
    from streamsynth.llm.types import GenerationConfig
    from streamsynth.stages.synthetic import SyntheticStage

    if cfg.output_field is None:  # StageSettings refuses a custom stage without one
        raise StageConfigError(f"stage {cfg.stage_name!r}: a custom stage needs 'output_field'")
    model = cfg.model or settings.llm.model
    generation = cfg.generation.apply(GenerationConfig())
    if cfg.response_format is not None:
        generation = generation.model_copy(update={"response_format": cfg.response_format})
    return SyntheticStage(
        name=cfg.stage_name,
        system_prompt=cfg.system_prompt,
        prompt=cfg.prompt,
        input_field=cfg.input_field or settings.record.text_field,
        output_field=cfg.output_field,
        client=client,
        model_name=model,
        generation_config=generation,
        parse_retries=cfg.parse_retries,
        on_truncated=cfg.on_truncated,
        **_guard_fields(settings, cfg, model),
    )


def _guard_fields(settings: Settings, cfg: StageSettings, model: str) -> dict[str, Any]:
    """The context guard's constructor fields: the model's context, the answer floor and,
    when the guard is on, the stage's tokenizer to count prompts with."""
    fields: dict[str, Any] = {}
    context = settings.llm.context_for(model)
    if context is not None:
        from streamsynth.engine.errors import StageConfigError
        from streamsynth.stages.nemotron_cc.tokenizer import (
            TokenizerUnavailableError,
            load_tokenizer,
        )

        fields["context_tokens"] = context
        try:
            fields["tokenizer"] = load_tokenizer(cfg.tokenizer)
        except TokenizerUnavailableError as exc:
            raise StageConfigError(f"stage {cfg.stage_name!r}: tokenizer: {exc}") from exc
    if cfg.min_output_tokens is not None:
        fields["min_output_tokens"] = cfg.min_output_tokens
    return fields


def _task_stage(
    settings: Settings, cfg: StageSettings, client: AsyncLLMClient | LLMClient
) -> BuiltStage:
    """A Nemotron-CC task stage (the task's own defaults fill what the entry leaves unset)."""
    from streamsynth.stages.nemotron_cc.tasks import build_task_stage

    overrides = cfg.generation.model_dump(exclude_unset=True)
    model = cfg.model or settings.llm.model
    # StageSettings refuses on_truncated: keep for a task (Curator drops truncated answers).
    on_truncated = None if cfg.on_truncated == "keep" else cfg.on_truncated
    stage = build_task_stage(
        cfg.task,
        client=client,
        model_name=model,
        generation_config=overrides or None,
        tokenizer=cfg.tokenizer,
        seed=cfg.seed,
        input_field=cfg.input_field or settings.record.text_field,
        system_prompt=cfg.system_prompt,
        prompt=cfg.prompt,
        curator_compat=cfg.curator_compat,
        name=cfg.stage_name,
        id_field=settings.record.id_field,
        count_special_tokens=cfg.count_special_tokens,
        context_tokens=settings.llm.context_for(model),
        min_output_tokens=cfg.min_output_tokens,
        on_truncated=on_truncated,
    )
    return BuiltStage(cfg, stage, segmented=stage.spec.unit == "segment")
