"""AiohttpChatClient, AsyncOpenAIClient and OpenAIClient against real loopback servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from streamsynth.engine.loop import background_loop
from streamsynth.llm import (
    AiohttpChatClient,
    AsyncLLMClient,
    AsyncOpenAIClient,
    BadRequestError,
    ChatRequest,
    EmptyChoicesError,
    GenerationConfig,
    Http1ChatClient,
    LLMConnectionError,
    LLMTimeoutError,
    MalformedResponseError,
    NotFoundError,
    OpenAIClient,
    RateLimitError,
    ServerError,
)
from streamsynth.local.llm_simulator import FaultConfig, LLMSimulator, SimulatorConfig

ASYNC_CLIENTS: dict[str, Callable[[str], AsyncLLMClient]] = {
    "aiohttp": lambda url: AiohttpChatClient(url, api_key="k-123", timeout_s=10),
    "http1": lambda url: Http1ChatClient(url, api_key="k-123", timeout_s=10),
    "openai": lambda url: AsyncOpenAIClient(url, api_key="k-123", timeout_s=10),
}


@pytest.fixture(params=sorted(ASYNC_CLIENTS))
def make_client(request: pytest.FixtureRequest) -> Callable[[str], AsyncLLMClient]:
    factory: Callable[[str], AsyncLLMClient] = ASYNC_CLIENTS[request.param]
    return factory


@pytest.fixture
async def client(
    llm_sim: LLMSimulator, make_client: Callable[[str], AsyncLLMClient]
) -> AsyncIterator[AsyncLLMClient]:
    c = make_client(llm_sim.base_url)
    yield c
    await c.aclose()


def req(content: str, **config: Any) -> ChatRequest:
    timeout = config.pop("timeout_s", None)
    return ChatRequest(
        model="sim-model",
        messages=({"role": "user", "content": content},),
        config=GenerationConfig(**config),
        timeout_s=timeout,
    )


# -- success ---------------------------------------------------------------------------


async def test_result_matches_what_the_server_sent(
    client: AsyncLLMClient, llm_sim: LLMSimulator
) -> None:
    result = await client.chat(req("Describe the water cycle in a few words.", max_tokens=5))
    assert result.texts and len(result.text.split()) == 5
    assert result.finish_reasons == ["length"]
    stats = llm_sim.stats()
    assert result.usage.prompt_tokens == stats.prompt_tokens == 8
    assert result.usage.completion_tokens == stats.completion_tokens == 5
    assert result.model == "sim-model"
    assert result.attempts == 1 and not result.cached
    assert result.endpoint == llm_sim.base_url
    assert 0 < result.latency_s < 5
    assert result.headers == {}  # the simulator sends no x-ratelimit-* without limits


async def test_body_on_the_wire(client: AsyncLLMClient, llm_sim: LLMSimulator) -> None:
    config = dict(
        max_tokens=33, seed=5, stop=["END"], temperature=0.7, top_p=0.9, top_k=20, n=2,
        extra_body={"repetition_penalty": 1.1},
    )  # fmt: skip
    result = await client.chat(req("Tell me about owls.", **config))
    assert len(result.texts) == 2 and len(result.finish_reasons) == 2
    sent = llm_sim.last_requests[-1]
    assert sent == {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "Tell me about owls."}],
        "n": 2,
        "temperature": 0.7,
        "max_tokens": 33,
        "seed": 5,
        "stop": ["END"],
        "top_p": 0.9,
        "top_k": 20,
        "repetition_penalty": 1.1,
    }


async def test_ratelimit_headers_are_returned_lowercased(
    make_client: Callable[[str], AsyncLLMClient],
) -> None:
    async with LLMSimulator(SimulatorConfig(rpm_limit=50, tpm_limit=10_000)) as sim:
        client = make_client(sim.base_url)
        try:
            result = await client.chat(req("hello world"))
        finally:
            await client.aclose()
    assert result.headers["x-ratelimit-limit-requests"] == "50"
    assert result.headers["x-ratelimit-remaining-requests"] == "49"
    assert result.headers["x-ratelimit-limit-tokens"] == "10000"
    assert all(k == k.lower() and k.startswith("x-ratelimit-") for k in result.headers)


async def test_authorization_header(make_client: Callable[[str], AsyncLLMClient]) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(
            {"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = make_client(f"http://127.0.0.1:{port}/v1")
    try:
        result = await client.chat(req("hi"))
    finally:
        await client.aclose()
        await runner.cleanup()
    assert seen == ["Bearer k-123"]
    assert result.text == "ok" and result.finish_reasons == [None]
    assert result.usage.total_tokens == 0  # no usage block: zero, not an error


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "error", "status", "retryable"),
    [
        ("[[sim:400]]", BadRequestError, 400, False),
        ("[[sim:429:2]]", RateLimitError, 429, True),
        ("[[sim:500]]", ServerError, 500, True),
        ("[[sim:503]]", ServerError, 503, True),
    ],
)
async def test_status_errors_are_typed(
    client: AsyncLLMClient,
    llm_sim: LLMSimulator,
    marker: str,
    error: type[Exception],
    status: int,
    retryable: bool,
) -> None:
    with pytest.raises(error) as info:
        await client.chat(req(f"doc {marker}"))
    exc = info.value
    assert exc.status_code == status  # type: ignore[attr-defined]
    assert exc.retryable is retryable  # type: ignore[attr-defined]
    assert exc.endpoint == llm_sim.base_url  # type: ignore[attr-defined]
    assert f"simulated HTTP {status}" in str(exc)
    if status == 429:
        assert exc.retry_after_s == 2.0  # type: ignore[attr-defined]
    assert llm_sim.stats().requests == 1  # a single attempt: no SDK retries


async def test_unknown_model_is_not_found(client: AsyncLLMClient) -> None:
    request = ChatRequest(model="nope", messages=({"role": "user", "content": "x"},))
    with pytest.raises(NotFoundError):
        await client.chat(request)


async def test_malformed_bodies(make_client: Callable[[str], AsyncLLMClient]) -> None:
    config = SimulatorConfig(faults=FaultConfig(rate_malformed=1.0))
    async with LLMSimulator(config) as sim:
        client = make_client(sim.base_url)
        try:
            for i in range(6):  # both shapes: non-JSON and JSON without choices
                with pytest.raises(MalformedResponseError) as info:
                    await client.chat(req(f"doc {i}"))
                assert not isinstance(info.value, EmptyChoicesError)
                assert info.value.retryable
        finally:
            await client.aclose()


async def test_empty_choices(client: AsyncLLMClient) -> None:
    with pytest.raises(EmptyChoicesError):
        await client.chat(req("doc [[sim:empty]]"))


async def test_per_request_timeout(client: AsyncLLMClient) -> None:
    start = time.perf_counter()
    with pytest.raises(LLMTimeoutError):
        await client.chat(req("doc [[sim:latency=3]]", timeout_s=0.2))
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("cls", [AiohttpChatClient, Http1ChatClient, AsyncOpenAIClient])
async def test_client_default_timeout(
    llm_sim: LLMSimulator, cls: type[AiohttpChatClient | AsyncOpenAIClient]
) -> None:
    client = cls(llm_sim.base_url, timeout_s=0.2)
    try:
        with pytest.raises(LLMTimeoutError):
            await client.chat(req("doc [[sim:latency=3]]"))
    finally:
        await client.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused(make_client: Callable[[str], AsyncLLMClient]) -> None:
    client = make_client(f"http://127.0.0.1:{_closed_port()}/v1")
    try:
        with pytest.raises(LLMConnectionError) as info:
            await client.chat(req("hello"))
        assert info.value.retryable
    finally:
        await client.aclose()


# -- event loops -----------------------------------------------------------------------


async def test_one_client_serves_several_loops(
    llm_sim: LLMSimulator, make_client: Callable[[str], AsyncLLMClient]
) -> None:
    client = make_client(llm_sim.base_url)
    first = await client.chat(req("from the test loop"))

    def on_fresh_loops() -> list[str]:
        # asyncio.run closes its loop each time: the client must not reuse that loop's pool.
        return [asyncio.run(client.chat(req(f"fresh loop {i}"))).text for i in range(3)]

    texts = await asyncio.to_thread(on_fresh_loops)
    bg = asyncio.run_coroutine_threadsafe(client.chat(req("background")), background_loop())
    background = await asyncio.wrap_future(bg)
    again = await client.chat(req("from the test loop"))
    assert len(texts) == 3 and all(texts) and background.text
    assert again.text == first.text
    await client.aclose()
    assert llm_sim.stats().status_counts == {200: 6}


async def test_aclose_closes_sessions_of_other_running_loops(llm_sim: LLMSimulator) -> None:
    client = AiohttpChatClient(llm_sim.base_url)
    await client.chat(req("here"))
    done = asyncio.run_coroutine_threadsafe(client.chat(req("there")), background_loop())
    await asyncio.wrap_future(done)
    sessions = client._sessions.items()
    assert len(sessions) == 2
    await client.aclose()
    assert all(s.closed for s in sessions)
    # Still usable afterwards: a new session is made on demand.
    assert (await client.chat(req("again"))).text
    await client.aclose()


# -- the synchronous SDK client --------------------------------------------------------


async def test_sync_openai_client(llm_sim: LLMSimulator) -> None:
    client = OpenAIClient(llm_sim.base_url, api_key="k", timeout_s=5)
    try:
        # The simulator runs on this loop: call the blocking client from a thread.
        result = await asyncio.to_thread(client.chat, req("Name three rivers.", top_k=3))
        assert result.text and result.attempts == 1 and result.finish_reason == "stop"
        assert llm_sim.last_requests[-1]["top_k"] == 3
        assert result.usage.prompt_tokens == 3
        with pytest.raises(RateLimitError) as info:
            await asyncio.to_thread(client.chat, req("x [[sim:429:3]]"))
        assert info.value.retry_after_s == 3.0
        with pytest.raises(LLMTimeoutError):
            await asyncio.to_thread(client.chat, req("x [[sim:latency=3]]", timeout_s=0.2))
        with pytest.raises(MalformedResponseError):
            await asyncio.to_thread(client.chat, req("x [[sim:malformed]]"))
        assert llm_sim.stats().requests == 4  # max_retries=0: one attempt each
    finally:
        client.close()
