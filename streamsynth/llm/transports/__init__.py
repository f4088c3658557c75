"""Single-attempt transports: one HTTP request per ``chat()`` call.

``aiohttp`` speaks the OpenAI wire format directly (the default: the SDK's
per-request overhead caps a worker below what a fleet of servers absorbs);
``openai`` goes through the official SDK for servers only it speaks to correctly.
Both parse answers with :mod:`~streamsynth.llm.transports.wire`, so they agree on
what "malformed" means. No transport imports another.
"""

from streamsynth.llm.transports.aiohttp import AiohttpChatClient

__all__ = ["AiohttpChatClient"]
