"""Ready-made stages: the generic SyntheticStage and the Nemotron-CC tasks."""

from streamsynth.stages.synthetic import BaseSyntheticStage, SyntheticStage

__all__ = ["BaseSyntheticStage", "SyntheticStage"]
