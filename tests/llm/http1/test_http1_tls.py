"""Http1ChatClient over TLS (``https://``): verified against the CA store, kept alive.

The server is a loopback TLS server with a certificate for 127.0.0.1 made by the
test (``tests/certs.py``). ``SSL_CERT_FILE`` is how a private CA reaches the
client's default context (OpenSSL reads it when the store is loaded), as it does
for aiohttp and the ssl module.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from certs import self_signed
from test_http1 import RawServer, ok, req

from streamsynth.llm import Http1ChatClient, LLMConnectionError


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[RawServer, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    raw = RawServer(ok)
    raw.server = await asyncio.start_server(raw._handle, "127.0.0.1", 0, ssl=context)
    yield raw, cert
    for writer in raw.writers:
        writer.close()
    raw.server.close()
    await raw.server.wait_closed()


def https_url(raw: RawServer) -> str:
    url: str = raw.url.replace("http://", "https://", 1)
    return url


async def test_requests_over_tls_share_one_verified_connection(
    tls_server: tuple[RawServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    client = Http1ChatClient(https_url(raw))
    try:
        texts = [(await client.chat(req())).text for _ in range(3)]
    finally:
        await client.aclose()
    assert texts == ["answer 1", "answer 2", "answer 3"]
    assert raw.connections == 1
    assert raw.heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


async def test_an_untrusted_certificate_is_a_connection_error(
    tls_server: tuple[RawServer, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raw, _ = tls_server
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))  # trusts another key, not the server's
    client = Http1ChatClient(https_url(raw))
    try:
        with pytest.raises(LLMConnectionError, match=r"(?i)certificate"):
            await client.chat(req())
    finally:
        await client.aclose()
    assert raw.requests == 0  # nothing was sent to an unverified peer
