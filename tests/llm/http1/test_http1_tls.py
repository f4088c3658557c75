"""Http1ChatClient over TLS (``https://``): verified against the CA store, kept alive.

The server is a loopback TLS server with a certificate made for 127.0.0.1 by the
test. ``SSL_CERT_FILE`` is how a private CA reaches the client's default context
(OpenSSL reads it when the store is loaded), as for aiohttp and the ssl module.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_http1 import RawServer, ok, req

from streamsynth.llm import Http1ChatClient, LLMConnectionError


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by its own key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamsynth test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


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
    return raw.url.replace("http://", "https://", 1)


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
