"""Http1ChatClient: OpenAI chat completions over a small HTTP/1.1 keep-alive pool.

Why our own pool rather than aiohttp's ``ClientSession``: at thousands of requests
in flight a worker spends most of its CPU in the HTTP client, and that CPU is what
caps one process's throughput. ``streamsynth bench client-throughput`` measured
aiohttp at about 300 us of CPU per request (timers, tracing hooks, header
multidicts, cookie and redirect handling, a task per write) where this client,
which does only what an API call needs, needs about 50 us. Parsing is httptools
(llhttp, the parser Node.js and uvicorn use), so the HTTP grammar -- chunked
bodies, keep-alive rules, malformed responses -- is not ours.

What it does:

* one pool of connections per host and event loop, at most ``max_connections``
  (waiters are served first in, first out); idle connections are reused last in,
  first out, so a burst does not keep cold connections warm, and one idle longer
  than ``keepalive_s`` is closed rather than reused (servers close idle
  connections after a few seconds: uvicorn after 5, so the default is 4);
* a request on a reused connection that the server closed before answering a
  byte is sent once more on a new connection (the close raced the request; the
  server never read it), any other loss is an :class:`LLMConnectionError`;
* ``Connection: close`` answers, bodies delimited by the connection's end,
  gzip/deflate bodies, TLS (``https://``, the system's CA store);
* a timeout or a cancellation closes its connection: a late answer must never
  be read as the next request's.

What it does not do, because an API client needs none of it: redirects,
cookies, proxies (neither transport reads the proxy variables), HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
import orjson

from streamsynth.llm.errors import (
    LLMConnectionError,
    LLMTimeoutError,
    MalformedResponseError,
    status_error,
)
from streamsynth.llm.transports.wire import LoopLocal, completion_result, error_message
from streamsynth.llm.types import ChatRequest, ChatResult

__all__ = ["Http1ChatClient"]

#: An answer larger than this is refused: no chat completion comes near it, and a
#: runaway body must not take the worker's memory.
MAX_BODY_BYTES = 64 << 20
#: Below uvicorn's (vLLM's server) default of 5 s, so a connection is never reused
#: just as the server closes it.
DEFAULT_KEEPALIVE_S = 4.0


class _Answer:
    """What one response carried, filled in by the parser's callbacks."""

    __slots__ = ("body", "complete", "headers", "keep_alive", "size", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer = _Answer()
        self.waiter: asyncio.Future[_Answer] | None = None
        self.idle_since = 0.0
        #: Requests answered on this connection (a lost reused one may be re-sent).
        self.used = 0
        self.closed = False
        #: A message began with no request waiting for it: the stream cannot be trusted.
        self.spoiled = False

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's do not subclass asyncio.Transport, so no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
            if self.spoiled:
                # Bytes nobody asked for (a 408 some servers send an idle connection
                # before closing it): never let them be read as the next answer.
                self.close()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            endpoint = self.pool.client.base_url
            if self.answer.size > MAX_BODY_BYTES:  # on_body refused it
                message = f"answer larger than {MAX_BODY_BYTES} bytes"
                self._fail(MalformedResponseError(message, endpoint=endpoint))
            else:  # as aiohttp: a broken HTTP stream is the connection's fault
                message = f"unparsable HTTP response: {type(exc).__name__}: {exc}"
                self._fail(LLMConnectionError(message, endpoint=endpoint))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        answer = self.answer
        if answer.status and "content-length" not in answer.headers and not self._chunked():
            answer.complete = True  # a body delimited by the connection's end
            waiter.set_result(answer)
        else:
            waiter.set_exception(_Lost(started=answer.status != 0 or bool(answer.body), exc=exc))

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.spoiled = True

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.answer.headers.get(key)
        self.answer.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.answer.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        answer = self.answer
        answer.size += len(body)
        if answer.size > MAX_BODY_BYTES:
            raise OverflowError  # httptools turns it into HttpParserCallbackError
        answer.body.append(body)

    def on_message_complete(self) -> None:
        answer = self.answer
        if 100 <= answer.status < 200:  # an interim answer: the real one follows
            self.answer = _Answer()
            return
        answer.complete = True
        # Read now: the parser resets for the next message once this callback returns.
        answer.keep_alive = self.parser.should_keep_alive()
        self.answer = _Answer()  # whatever follows in this read is not this answer's
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # -- requests ------------------------------------------------------------------------
    def send(self, payload: bytes) -> asyncio.Future[_Answer]:
        assert self.transport is not None
        self.answer = _Answer()
        self.waiter = waiter = self.pool.loop.create_future()
        self.transport.write(payload)
        return waiter

    def reusable(self, answer: _Answer) -> bool:
        return not (self.closed or self.spoiled) and answer.keep_alive

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()  # connection_lost follows, which forgets it
        self.closed = True

    def _chunked(self) -> bool:
        return "chunked" in self.answer.headers.get("transfer-encoding", "").lower()

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


class _Lost(Exception):
    """The connection ended before the answer did."""

    def __init__(self, *, started: bool, exc: Exception | None) -> None:
        super().__init__(f"connection closed{'' if exc is None else f': {exc}'}")
        self.started = started


class _Pool:
    """The connections of one event loop to one server."""

    def __init__(self, client: Http1ChatClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        #: Idle connections, oldest first (a dict is an ordered set with O(1) removal).
        self.idle: dict[_Connection, None] = {}
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        #: Connections open or being opened.
        self.open = 0
        self.closing = False

    def take_idle(self) -> _Connection | None:
        """An idle connection still fit for use (the most recently used), if there is one."""
        if not self.idle:
            return None
        now = time.monotonic()
        keepalive = self.client.keepalive_s
        while self.idle:
            conn, _ = self.idle.popitem()
            if not conn.closed and now - conn.idle_since <= keepalive:
                return conn
            conn.close()
        return None

    async def acquire(self) -> _Connection:
        """A connection of its own for one request: idle, new, or handed over."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        if self.open >= self.client.max_connections:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())  # handed over as we were cancelled
                raise
            if handed is not None:
                return handed
        return await self._connect()

    async def _connect(self) -> _Connection:
        """A new connection; the caller was given the right to open one."""
        self.open += 1
        client = self.client
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self),
                client.host,
                client.port,
                ssl=client.ssl_context,
                server_hostname=client.host if client.ssl_context else None,
            )
        except BaseException:
            self.open -= 1
            self._pass_on(None)
            raise
        return conn

    def release(self, conn: _Connection, answer: _Answer) -> None:
        """``answer`` ended the request on ``conn``: keep it for the next one, or close it."""
        if self.closing or not conn.reusable(answer):
            conn.close()
            return
        conn.used += 1
        conn.idle_since = time.monotonic()
        self._pass_on(conn)

    def _pass_on(self, conn: _Connection | None) -> None:
        """Hand ``conn`` (or, with None, the right to open one) to the first waiter."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self.idle[conn] = None

    def forget(self, conn: _Connection) -> None:
        """``conn`` is closed (by us or by the server)."""
        self.idle.pop(conn, None)
        self.open -= 1
        self._pass_on(None)

    async def aclose(self) -> None:
        self.closing = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.cancel()
        self.waiters.clear()


class Http1ChatClient:
    """An :class:`~streamsynth.llm.client.AsyncLLMClient` over a lean HTTP/1.1 pool.

    ``base_url`` ends before ``/chat/completions`` (e.g. ``http://host:8000/v1``).
    ``timeout_s`` bounds one attempt (waiting for a pooled connection included)
    unless the request sets its own ``timeout_s``; ``max_connections`` sizes each
    event loop's pool, so keep the endpoint's concurrency limit at or below it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "EMPTY",
        *,
        timeout_s: float = 120.0,
        max_connections: int = 256,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl_context = ssl.create_default_context() if parts.scheme == "https" else None
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        target = f"{parts.path}/chat/completions" + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Host": parts.netloc.rpartition("@")[2],
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "streamsynth",
            **(default_headers or {}),
        }
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        # Built once: per request only the length and the body are added.
        self._head = f"POST {target} HTTP/1.1\r\n{lines}Content-Length: ".encode("latin-1")
        self._pools: LoopLocal[_Pool] = LoopLocal(
            lambda: _Pool(self), _close_pool, lambda pool: pool.closing
        )

    def __repr__(self) -> str:
        return f"Http1ChatClient({self.base_url!r})"

    async def aclose(self) -> None:
        """Close the pools of every loop this client was used on."""
        await self._pools.aclose()

    async def chat(self, request: ChatRequest) -> ChatResult:
        pool = self._pools.get()
        body = orjson.dumps(request.body())
        payload = b"%b%d\r\n\r\n%b" % (self._head, len(body), body)
        timeout = self.timeout_s if request.timeout_s is None else request.timeout_s
        start = time.perf_counter()
        try:
            answer = await self._exchange(pool, payload, pool.loop.time() + timeout)
        except TimeoutError as exc:
            raise LLMTimeoutError(f"no answer within {timeout} s", endpoint=self.base_url) from exc
        except OSError as exc:  # refused, reset, unreachable, TLS
            raise LLMConnectionError(
                f"{type(exc).__name__}: {exc}", endpoint=self.base_url
            ) from exc
        except _Lost as exc:
            raise LLMConnectionError(str(exc), endpoint=self.base_url) from exc
        latency = time.perf_counter() - start
        raw = _decoded(answer, self.base_url)
        if not 200 <= answer.status < 300:
            raise status_error(
                answer.status, error_message(raw), answer.headers, endpoint=self.base_url
            )
        return completion_result(
            raw, answer.headers, request, endpoint=self.base_url, latency_s=latency
        )

    async def _exchange(self, pool: _Pool, payload: bytes, deadline: float) -> _Answer:
        """Send ``payload`` and read the answer by ``deadline`` (loop time); once more if
        a reused connection was closed under the request before it answered anything.

        The wait for the answer is bounded by one timer on its future rather than by
        ``asyncio.timeout`` (which reschedules and inspects the task): at thousands of
        requests a second that difference shows in a profile. An idle connection is taken
        without any; waiting for one is rare (the endpoint's limit is at most the pool's)
        and uses the plain timeout.
        """
        for attempt in (1, 2):
            conn = pool.take_idle()
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await pool.acquire()
            reused = conn.used > 0
            waiter = conn.send(payload)
            timer = pool.loop.call_at(deadline, _expire, waiter)
            try:
                answer = await waiter
            except _Lost as lost:
                if attempt == 1 and reused and not lost.started:
                    continue
                raise
            except BaseException:  # cancelled, timed out, malformed: the answer may still come
                conn.close()
                raise
            finally:
                timer.cancel()
            pool.release(conn, answer)
            return answer
        raise AssertionError("unreachable")


def _expire(waiter: asyncio.Future[_Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _decoded(answer: _Answer, endpoint: str) -> bytes:
    raw = b"".join(answer.body)
    encoding = answer.headers.get("content-encoding", "identity").lower()
    if encoding in ("identity", ""):
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            # wbits 47: zlib or gzip framing, told apart by the header.
            return zlib.decompress(raw, 47)
        except zlib.error as exc:
            if encoding == "deflate":  # some servers send raw deflate under this name
                with contextlib.suppress(zlib.error):
                    return zlib.decompress(raw, -15)
            message = f"bad {encoding} body: {exc}"
            raise MalformedResponseError(message, endpoint=endpoint) from exc
    raise MalformedResponseError(f"unsupported content-encoding {encoding!r}", endpoint=endpoint)


async def _close_pool(pool: _Pool) -> None:
    await pool.aclose()
