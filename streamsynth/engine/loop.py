"""Event loops: which kind a process runs on, and a background loop for the sync API.

:func:`run` is ``asyncio.run`` on the loop kind a process asks for. ``auto`` takes
uvloop where it is installed (a dependency everywhere but Windows): at thousands
of requests in flight a worker is bound by its own CPU, and uvloop's loop and
sockets cost a fraction of asyncio's (``streamsynth bench depth`` shows the gain).

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
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from streamsynth.errors import ConfigError

T = TypeVar("T")

LoopKind = Literal["auto", "uvloop", "asyncio"]


def loop_factory(kind: LoopKind = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of ``kind``; ``uvloop`` asked for and missing is an error."""
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ConfigError("worker.event_loop: uvloop is not installed") from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(coro: Coroutine[Any, Any, T], *, kind: LoopKind = "auto") -> T:
    """``asyncio.run(coro)`` on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(coro)


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
