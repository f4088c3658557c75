"""The five Nemotron-CC synthetic-data tasks and their pre/post-processing.

The tasks are data: :data:`TASK_SPECS` holds each task's prompts, token budgets,
post-processing chain and the tutorial's sampling settings; :data:`TASKS` maps the
config's task names to the five stage classes, which keep NeMo Curator's class names
and carry nothing but their spec.

Inspecting a drop (the public API for debugging a record)::

    from streamsynth.stages.nemotron_cc import build_task_stage, Dropped

    stage = build_task_stage("distill", client=client, model_name="m",
                             tokenizer="hf:/models/llama/tokenizer.json",
                             curator_compat="fixes")       # or "exact"
    pre = stage.preprocess(record["text"])   # Preprocessed: .segments, or .filtered (a reason)
    rng = stage.record_rng(record, record["text"])         # DiverseQA's per-record sampling
    for segment in pre.segments:
        verdict = stage.postprocess_answer(segment, chat_result, rng)
        if isinstance(verdict, Dropped):
            print(segment.index, verdict.reason)            # a FilterReason
        else:
            print(segment.index, verdict)                   # the kept text

``curator_compat`` (:mod:`~streamsynth.stages.nemotron_cc.compat`): ``exact``
reproduces NeMo Curator 1.4.0's tutorial chain bit for bit, ``fixes`` (the default)
applies the documented :class:`Fix` list (README, "Nemotron-CC").
"""

from streamsynth.stages.nemotron_cc.compat import (
    ALL_FIXES,
    CURATOR_COMPAT_MODES,
    CuratorCompat,
    Fix,
    fixes_for,
)
from streamsynth.stages.nemotron_cc.postprocess import Dropped, PostResult, Rules
from streamsynth.stages.nemotron_cc.preprocess import (
    FilterReason,
    Preprocessed,
    Segment,
    segment_budget,
)
from streamsynth.stages.nemotron_cc.tasks import (
    SEGMENT_INDEX,
    TASK_NAMES,
    TASK_SPECS,
    TASKS,
    DistillStage,
    DiverseQAStage,
    ExtractKnowledgeStage,
    KnowledgeListStage,
    NemotronCCStage,
    Sampling,
    TaskSpec,
    WikipediaParaphrasingStage,
    build_task_stage,
    default_generation_config,
)
from streamsynth.stages.nemotron_cc.tokenizer import (
    ApproxTokenizer,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    TokenizerUnavailableError,
    load_tokenizer,
)

__all__ = [
    "ALL_FIXES",
    "CURATOR_COMPAT_MODES",
    "SEGMENT_INDEX",
    "TASKS",
    "TASK_NAMES",
    "TASK_SPECS",
    "ApproxTokenizer",
    "CuratorCompat",
    "DistillStage",
    "DiverseQAStage",
    "Dropped",
    "ExtractKnowledgeStage",
    "FilterReason",
    "Fix",
    "HFTokenizer",
    "KnowledgeListStage",
    "NemotronCCStage",
    "PostResult",
    "Preprocessed",
    "Rules",
    "Sampling",
    "Segment",
    "TaskSpec",
    "TiktokenTokenizer",
    "Tokenizer",
    "TokenizerUnavailableError",
    "WikipediaParaphrasingStage",
    "build_task_stage",
    "default_generation_config",
    "fixes_for",
    "load_tokenizer",
    "segment_budget",
]
