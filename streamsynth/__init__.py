"""streamsynth: turn a stream of documents into synthetic pretraining data."""

__version__ = "0.1.0"
