"""A process-wide background event loop for the synchronous API.

``Stage.process()`` must work from plain code and from inside a running loop,
and one stage must serve any number of batches. Running every synchronous
call on one long-lived loop (rather than ``asyncio.run`` per call, which
closes the loop that pooled connections are bound to) gives both.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use in a daemon thread."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="streamsynth-loop", daemon=True)
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result.

    Called from inside a running loop this blocks that loop's thread for the
    duration (a synchronous API cannot do otherwise); async callers should use
    the ``a``-prefixed methods instead.
    """
    loop = background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_sync() called from the background loop itself; await instead")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _shutdown() -> None:
    loop = _loop
    if loop is None or loop.is_closed():
        return
    # Let clients close their pools on this loop first: stopping it bare would leave
    # "Unclosed client session" warnings at interpreter exit.
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)
