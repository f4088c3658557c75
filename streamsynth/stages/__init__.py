"""Ready-made stages: the generic SyntheticStage and the Nemotron-CC tasks."""

from streamsynth.stages.nemotron_cc import (
    TASKS,
    DistillStage,
    DiverseQAStage,
    ExtractKnowledgeStage,
    KnowledgeListStage,
    NemotronCCStage,
    WikipediaParaphrasingStage,
    build_task_stage,
)
from streamsynth.stages.synthetic import BaseSyntheticStage, SyntheticStage

__all__ = [
    "TASKS",
    "BaseSyntheticStage",
    "DistillStage",
    "DiverseQAStage",
    "ExtractKnowledgeStage",
    "KnowledgeListStage",
    "NemotronCCStage",
    "SyntheticStage",
    "WikipediaParaphrasingStage",
    "build_task_stage",
]
