"""Old import path of :mod:`streamsynth.llm.transports.openai` (kept for existing imports)."""

from streamsynth.llm.transports.openai import AsyncOpenAIClient, OpenAIClient

__all__ = ["AsyncOpenAIClient", "OpenAIClient"]
