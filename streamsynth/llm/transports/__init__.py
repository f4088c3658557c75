"""Single-attempt transports: one HTTP request per ``chat()`` call.

``http1`` (the default) speaks the OpenAI wire format over our own HTTP/1.1
keep-alive pool, the least CPU per request; ``aiohttp`` does the same through
aiohttp's ``ClientSession``; ``openai`` goes through the official SDK for servers
only it speaks to correctly (the SDK's per-request overhead caps a worker well
below what a fleet of servers absorbs). All three parse answers with
:mod:`~streamsynth.llm.transports.wire`, so they agree on what "malformed" means.
No transport imports another.
"""

from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.transports.http1 import Http1ChatClient

__all__ = ["AiohttpChatClient", "Http1ChatClient"]
