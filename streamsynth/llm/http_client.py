"""Old import path of :mod:`streamsynth.llm.transports.aiohttp` (kept for existing imports)."""

from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.transports.wire import LoopLocal, completion_result

__all__ = ["AiohttpChatClient", "LoopLocal", "completion_result"]
