"""Http1ChatClient's pool and HTTP handling, against a scripted raw loopback server.

The shared behaviour of every transport (typed errors, timeouts, several loops) is
tested in ``test_transport.py``; here is what only a hand-kept pool can get wrong:
reuse, stale and closed connections, limits, late answers, body framings. Each test
runs on asyncio's loop and on uvloop's (``conftest.py``): the worker runs on uvloop
where it is installed, and uvloop's transports are not asyncio's classes.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import orjson
import pytest

from streamsynth.llm import (
    ChatRequest,
    GenerationConfig,
    Http1ChatClient,
    LLMConnectionError,
    LLMTimeoutError,
    MalformedResponseError,
    RateLimitError,
)
from streamsynth.llm.transports import http1

Reader: TypeAlias = asyncio.StreamReader
Writer: TypeAlias = asyncio.StreamWriter
#: Reply(reader, writer, request_number) -> None: writes one answer (or misbehaves).
Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def completion(text: str) -> bytes:
    return orjson.dumps(
        {
            "model": "m",
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
    )


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


@dataclass
class RawServer:
    """One loopback server; ``reply`` answers each request; it counts connections."""

    reply: Reply
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.bodies.append(await reader.readexactly(length))
                self.requests += 1
                await self.reply(reader, writer, self.requests)
                if writer.is_closing():
                    return
        finally:
            self.open_now -= 1
            writer.close()


Serve = Callable[[Reply], Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[RawServer] = []

    async def start(reply: Reply) -> RawServer:
        raw = RawServer(reply)
        raw.server = await asyncio.start_server(raw._handle, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        for writer in raw.writers:
            writer.close()
        raw.server.close()
        await raw.server.wait_closed()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (state another task changes), bounded in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the pool")
        await asyncio.sleep(0.01)


def req(content: str = "hi", timeout_s: float | None = None) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=({"role": "user", "content": content},),
        config=GenerationConfig(max_tokens=4),
        timeout_s=timeout_s,
    )


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(answer(completion(f"answer {n}")))


async def test_connections_are_kept_alive_and_reused(serve: Serve) -> None:
    raw = await serve(ok)
    client = Http1ChatClient(raw.url)
    try:
        texts = [(await client.chat(req())).text for _ in range(5)]
    finally:
        await client.aclose()
    assert texts == [f"answer {n}" for n in range(1, 6)]
    assert raw.connections == 1


async def test_request_on_the_wire_is_a_plain_http11_post(serve: Serve) -> None:
    raw = await serve(ok)
    client = Http1ChatClient(raw.url, api_key="k-9", default_headers={"X-Team": "data"})
    try:
        await client.chat(req("the body"))
    finally:
        await client.aclose()
    body = orjson.loads(raw.bodies[0])
    assert body["messages"] == [{"role": "user", "content": "the body"}]
    assert body["model"] == "m" and body["max_tokens"] == 4
    lines = raw.heads[0].decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    port = raw.url.split(":")[2].split("/")[0]
    for expected in (
        f"Host: 127.0.0.1:{port}",
        "Authorization: Bearer k-9",
        "Content-Type: application/json",
        "X-Team: data",
        f"Content-Length: {len(raw.bodies[0])}",
    ):
        assert expected in lines


async def test_idle_connection_closed_by_the_server_is_replaced(
    serve: Serve,
) -> None:
    async def then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        writer.write(answer(completion(f"answer {n}")))
        await writer.drain()
        writer.close()  # as a server's keep-alive timeout does, without Connection: close

    raw = await serve(then_close)
    client = Http1ChatClient(raw.url)
    try:
        first = await client.chat(req())
        # Wait for the client to notice the close (its pool forgets the connection).
        pool = client._pools.get()
        await until(lambda: not pool.idle)
        second = await client.chat(req())
    finally:
        await client.aclose()
    assert (first.text, second.text) == ("answer 1", "answer 2")
    assert raw.connections == 2


async def test_reused_connection_lost_before_any_answer_is_sent_once_more(
    serve: Serve,
) -> None:
    """The race a keep-alive timeout makes: the server closes just as we send."""

    async def drop_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n == 2:
            writer.close()  # read the request, answer nothing
            return
        writer.write(answer(completion(f"answer {n}")))

    raw = await serve(drop_second)
    client = Http1ChatClient(raw.url)
    try:
        await client.chat(req())
        again = await client.chat(req())
    finally:
        await client.aclose()
    assert again.text == "answer 3"
    assert raw.requests == 3 and raw.connections == 2


async def test_connection_lost_mid_answer_is_a_connection_error(
    serve: Serve,
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        whole = answer(completion("a long answer"))
        writer.write(whole[: len(whole) - 5])
        await writer.drain()
        writer.close()

    raw = await serve(cut)
    client = Http1ChatClient(raw.url)
    try:
        with pytest.raises(LLMConnectionError):
            await client.chat(req())
    finally:
        await client.aclose()
    assert raw.requests == 1  # a started answer is never sent again here


async def test_bytes_sent_to_an_idle_connection_are_never_an_answer(serve: Serve) -> None:
    async def then_408(reader: Reader, writer: Writer, n: int) -> None:
        writer.write(answer(completion(f"answer {n}")))
        writer.write(answer(b"idle too long", status="408 Request Timeout"))

    raw = await serve(then_408)
    client = Http1ChatClient(raw.url)
    try:
        first = await client.chat(req())
        second = await client.chat(req())
    finally:
        await client.aclose()
    assert (first.text, second.text) == ("answer 1", "answer 2")


async def test_idle_beyond_keepalive_is_not_reused(serve: Serve) -> None:
    raw = await serve(ok)
    client = Http1ChatClient(raw.url, keepalive_s=0.0)
    try:
        await client.chat(req())
        await client.chat(req())
    finally:
        await client.aclose()
    assert raw.connections == 2


@pytest.mark.parametrize(
    "framing",
    ["connection-close", "chunked", "close-delimited", "gzip", "deflate", "raw-deflate"],
)
async def test_body_framings(serve: Serve, framing: str) -> None:
    body = completion("framed")

    async def framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if framing == "connection-close":
            writer.write(answer(body, extra="Connection: close\r\n"))
        elif framing == "chunked":
            half = len(body) // 2
            chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:half], body[half:]))
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        elif framing == "close-delimited":
            writer.write(head + b"\r\n" + body)
            await writer.drain()
            writer.close()
        else:
            packed = {
                "gzip": gzip.compress(body),
                "deflate": zlib.compress(body),
                "raw-deflate": zlib.compress(body)[2:-4],
            }[framing]
            name = "gzip" if framing == "gzip" else "deflate"
            writer.write(answer(packed, extra=f"Content-Encoding: {name}\r\n"))

    raw = await serve(framed)
    client = Http1ChatClient(raw.url)
    try:
        first = await client.chat(req())
        second = await client.chat(req())
    finally:
        await client.aclose()
    assert first.text == second.text == "framed"
    closes = framing in ("connection-close", "close-delimited")
    assert raw.connections == (2 if closes else 1)


async def test_pool_never_opens_more_than_max_connections(serve: Serve) -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await release.wait()
        writer.write(answer(completion(f"answer {n}")))

    raw = await serve(slow)
    client = Http1ChatClient(raw.url, max_connections=3)
    try:
        calls = [asyncio.ensure_future(client.chat(req())) for _ in range(12)]
        await until(lambda: raw.requests == 3)
        assert raw.open_now == 3  # the other nine wait for a connection
        release.set()
        results = await asyncio.gather(*calls)
    finally:
        await client.aclose()
    assert len({r.text for r in results}) == 12
    assert raw.most_open == 3 and raw.connections == 3


async def test_a_cancelled_request_never_hands_its_late_answer_to_the_next(
    serve: Serve,
) -> None:
    first_seen = asyncio.Event()
    late = asyncio.Event()

    async def first_late(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n == 1:
            first_seen.set()
            await late.wait()
        writer.write(answer(completion(f"answer {n}")))

    raw = await serve(first_late)
    client = Http1ChatClient(raw.url, max_connections=1)
    try:
        call = asyncio.ensure_future(client.chat(req()))
        await first_seen.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        late.set()
        second = await client.chat(req())
    finally:
        await client.aclose()
    assert second.text == "answer 2"
    assert raw.connections == 2


async def test_timeout_waiting_for_a_connection(serve: Serve) -> None:
    never = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await never.wait()

    raw = await serve(hang)
    client = Http1ChatClient(raw.url, max_connections=1)
    try:
        hung = asyncio.ensure_future(client.chat(req(timeout_s=30)))
        await until(lambda: raw.requests == 1)
        with pytest.raises(LLMTimeoutError):
            await client.chat(req(timeout_s=0.2))  # the one connection is busy
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        pool = client._pools.get()
        assert not pool.waiters  # the timed-out waiter left the queue
    finally:
        never.set()
        await client.aclose()


async def test_too_large_an_answer_is_refused(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 64)
    raw = await serve(ok)
    client = Http1ChatClient(raw.url)
    try:
        with pytest.raises(MalformedResponseError, match="larger than 64 bytes"):
            await client.chat(req())
    finally:
        await client.aclose()


async def test_garbage_instead_of_http_is_a_connection_error(serve: Serve) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    raw = await serve(garbage)
    client = Http1ChatClient(raw.url)
    try:
        with pytest.raises(LLMConnectionError, match="unparsable HTTP response"):
            await client.chat(req())
    finally:
        await client.aclose()


async def test_status_error_keeps_headers(serve: Serve) -> None:
    async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        body = orjson.dumps({"error": {"message": "slow down"}})
        extra = "Retry-After: 2\r\nX-RateLimit-Remaining-Requests: 0\r\n"
        writer.write(answer(body, status="429 Too Many Requests", extra=extra))

    raw = await serve(limited)
    client = Http1ChatClient(raw.url)
    try:
        with pytest.raises(RateLimitError) as info:
            await client.chat(req())
    finally:
        await client.aclose()
    assert info.value.retry_after_s == 2.0
    assert "slow down" in str(info.value)
    assert raw.connections == 1


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        Http1ChatClient("ftp://example.invalid/v1")
    with pytest.raises(ValueError, match="max_connections"):
        Http1ChatClient("http://127.0.0.1:1/v1", max_connections=0)
