"""A bare OpenAI-shaped endpoint on loopback for tests that shape answers by hand.

The LLM simulator (``streamsynth.local.llm_simulator``) covers ordinary answers and
faults; a test that needs an answer no server should send (odd shapes, echoed keys)
writes one aiohttp handler and serves it here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

ChatHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def chat_stub(handler: ChatHandler) -> AsyncIterator[str]:
    """Serve ``handler`` as ``POST /v1/chat/completions`` on a free loopback port.

    Yields the base URL (``http://127.0.0.1:PORT/v1``); the server stops on exit.
    """
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
