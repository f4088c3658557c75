"""A start-up reachability probe for readiness: has the LLM endpoint answered once?

Readiness must not wait for the first record (an idle topic would keep a pod unready
forever and stall a rolling update), so the worker asks ``GET {base_url}/models``
until some endpoint answers. Any HTTP answer below 500 counts: the server is there,
even one that does not implement ``/models``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import aiohttp

log = logging.getLogger("streamsynth.llm.probe")


async def endpoint_answers(base_url: str, api_key: str, timeout_s: float = 5.0) -> bool:
    """True when ``base_url`` answers ``GET /models`` with a status below 500."""
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{base_url.rstrip('/')}/models", headers=headers) as resp,
        ):
            return resp.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_until_reachable(
    base_urls: Sequence[str],
    api_key: str,
    on_reachable: Callable[[], None],
    *,
    interval_s: float = 5.0,
) -> None:
    """Probe every ``interval_s`` until one endpoint answers, then call ``on_reachable``."""
    while True:
        for url in base_urls:
            if await endpoint_answers(url, api_key):
                on_reachable()
                return
        log.warning("no LLM endpoint answers yet", extra={"endpoints": len(base_urls)})
        await asyncio.sleep(interval_s)
