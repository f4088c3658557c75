"""The stage engine: batches, stages and pipelines."""

from streamsynth.engine.batch import SOURCE_COLUMNS, DocumentBatch, SourceRef
from streamsynth.engine.errors import (
    EngineError,
    MissingColumnError,
    PostProcessingError,
    StageConfigError,
)
from streamsynth.engine.pipeline import Pipeline
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
    "STAT_COLUMNS",
    "DocumentBatch",
    "EngineError",
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
]
