"""The stage engine: batches, stages and pipelines."""

from streamsynth.engine.batch import SOURCE_COLUMNS, DocumentBatch, SourceRef
from streamsynth.engine.errors import (
    EngineError,
    MissingColumnError,
    PostProcessingError,
    StageConfigError,
)
from streamsynth.engine.graph import (
    Condition,
    GraphError,
    GraphNode,
    StageGraph,
    StageRun,
    When,
    evaluate,
    parse_when,
)
from streamsynth.engine.pipeline import STAGE_COLUMN, Pipeline
from streamsynth.engine.stage import (
    ERROR_COLUMN,
    STAT_COLUMNS,
    LLMCall,
    Output,
    RecordOutcome,
    RecordStage,
    Stage,
)

__all__ = [
    "ERROR_COLUMN",
    "SOURCE_COLUMNS",
    "STAGE_COLUMN",
    "STAT_COLUMNS",
    "Condition",
    "DocumentBatch",
    "EngineError",
    "GraphError",
    "GraphNode",
    "LLMCall",
    "MissingColumnError",
    "Output",
    "Pipeline",
    "PostProcessingError",
    "RecordOutcome",
    "RecordStage",
    "SourceRef",
    "Stage",
    "StageConfigError",
    "StageGraph",
    "StageRun",
    "When",
    "evaluate",
    "parse_when",
]
