"""The five Nemotron-CC synthetic-data tasks and their pre/post-processing."""

from streamsynth.stages.nemotron_cc.postprocess import Dropped, PostResult
from streamsynth.stages.nemotron_cc.preprocess import FilterReason, Preprocessed, Segment
from streamsynth.stages.nemotron_cc.tasks import (
    SEGMENT_INDEX,
    TASK_SPECS,
    TASKS,
    DistillStage,
    DiverseQAStage,
    ExtractKnowledgeStage,
    KnowledgeListStage,
    NemotronCCStage,
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
    "SEGMENT_INDEX",
    "TASKS",
    "TASK_SPECS",
    "ApproxTokenizer",
    "DistillStage",
    "DiverseQAStage",
    "Dropped",
    "ExtractKnowledgeStage",
    "FilterReason",
    "HFTokenizer",
    "KnowledgeListStage",
    "NemotronCCStage",
    "PostResult",
    "Preprocessed",
    "Segment",
    "TaskSpec",
    "TiktokenTokenizer",
    "Tokenizer",
    "TokenizerUnavailableError",
    "WikipediaParaphrasingStage",
    "build_task_stage",
    "default_generation_config",
    "load_tokenizer",
]
