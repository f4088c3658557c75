"""Helpers for the worker's integration tests: configs, the worker subprocess, topic I/O."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamsynth.kafka.dlq import header_map
from streamsynth.local.broker import create_topics

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A topic or group name no other test (or earlier run on the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_counter)}"


@dataclass
class Topics:
    input: str
    dlq: str
    outputs: dict[str, str]  # stage name -> topic
    filtered: str | None = None
    group: str = ""

    @classmethod
    def make(cls, stages: Iterable[str], *, filtered: bool = False) -> Topics:
        base = unique("t")
        return cls(
            input=f"{base}.in",
            dlq=f"{base}.dlq",
            outputs={s: f"{base}.out.{s}" for s in stages},
            filtered=f"{base}.filtered" if filtered else None,
            group=f"{base}.group",
        )

    def all_outputs(self) -> list[str]:
        names = [self.dlq, *self.outputs.values()]
        if self.filtered:
            names.append(self.filtered)
        return names

    async def create(self, bootstrap: str, partitions: int = 4) -> None:
        spec = {self.input: partitions}
        spec.update({name: partitions for name in self.all_outputs()})
        await create_topics(bootstrap, spec)


def custom_stage(name: str, topic: str, prompt: str = "Summarize:\n\n{document}") -> dict[str, Any]:
    return {
        "task": "custom",
        "name": name,
        "prompt": prompt,
        "output_field": name,
        "output_topic": topic,
        "generation": {"max_tokens": 20},
    }


def worker_config(
    bootstrap: str,
    topics: Topics,
    llm_url: str,
    stages: list[dict[str, Any]],
    **overrides: Any,
) -> dict[str, Any]:
    """A worker config with the small timeouts the suite needs (see test docstrings)."""
    cfg: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": topics.group,
            "input_topic": topics.input,
            "dlq_topic": topics.dlq,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "max_poll_interval_ms": 30000,
            "linger_ms": 2,
        },
        "llm": {
            "base_url": llm_url,
            "model": "sim-model",
            "max_concurrency": 64,
            "timeout_s": 5,
            "deadline_s": 30,
            "max_attempts": 4,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
            "breaker_failures": 1000,
            "cache": {"kind": "none"},
        },
        "stages": stages,
        "worker": {
            "max_batch_records": 100,
            "max_batch_wait_ms": 20,
            "max_inflight_records": 200,
            "commit_interval_s": 0.2,
            "drain_timeout_s": 3,
            "shutdown_timeout_s": 5,
        },
        "metrics": {"enabled": True, "port": 0},
        "logging": {"level": "INFO", "format": "json"},
    }
    if topics.filtered:
        cfg["kafka"]["filtered_topic"] = topics.filtered
    for dotted, value in overrides.items():
        section, key = dotted.split("__", 1)
        cfg[section][key] = value
    return cfg


@dataclass
class WorkerProcess:
    """``python -m streamsynth.kafka --config FILE`` as a child process."""

    config: dict[str, Any]
    workdir: Path
    name: str = "worker"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self) -> WorkerProcess:
        cfg_path = self.workdir / f"{self.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config))
        env = dict(os.environ)
        env.pop("STREAMSYNTH_LLM__API_KEY", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamsynth.kafka", "--config", str(cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Teardown: TERM, then KILL if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def doc(i: int, text: str | None = None, **extra: Any) -> tuple[bytes, bytes]:
    """(key, value) of input document ``i``."""
    body = {"id": f"doc-{i}", "text": text or f"document number {i} about topic {i % 17}"}
    body.update(extra)
    return f"doc-{i}".encode(), orjson.dumps(body)


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=32 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await producer.flush()
        for fut in futures:
            await fut
        return len(futures)
    finally:
        await producer.stop()


@dataclass
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    def json(self) -> dict[str, Any]:
        return dict(orjson.loads(self.value or b"null"))


class TopicReader:
    """Reads topics from the beginning without a group (assign + seek), incrementally."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.records: dict[str, list[Received]] = {t: [] for t in topics}
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await self._consumer.start()
        tps = []
        for topic in self.topics:
            parts = await self._wait_partitions(topic)
            tps.extend(TopicPartition(topic, p) for p in parts)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def _wait_partitions(self, topic: str) -> set[int]:
        assert self._consumer is not None
        for _ in range(100):
            parts = self._consumer.partitions_for_topic(topic)
            if parts:
                return set(parts)
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.05)
        raise AssertionError(f"topic {topic} has no partitions")

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        n = 0
        for tp, msgs in batch.items():
            for m in msgs:
                self.records[tp.topic].append(
                    Received(
                        tp.topic, tp.partition, m.offset, m.key, m.value, header_map(m.headers)
                    )
                )
                n += 1
        return n

    async def until(
        self, done: Callable[[TopicReader], bool], timeout_s: float, what: str = ""
    ) -> None:
        """Poll until ``done(self)``; fail after ``timeout_s`` (bounded by time)."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if time.monotonic() > deadline:
                counts = {t: len(v) for t, v in self.records.items()}
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {counts}")
            await self.poll()

    async def settle(self, quiet_s: float = 1.0, max_s: float = 10.0) -> None:
        """Poll until nothing new arrives for ``quiet_s`` (catches late duplicates)."""
        deadline = time.monotonic() + max_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            if await self.poll(timeout_ms=100):
                quiet_since = time.monotonic()

    def ids(self, topic: str, field_name: str = "id") -> list[str]:
        out = []
        for r in self.records[topic]:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
                out.append(str(r.json()[field_name]))
        return out

    def keys(self, topic: str) -> list[str]:
        return [r.key.decode() if r.key is not None else "" for r in self.records[topic]]


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            value = await consumer.committed(TopicPartition(topic, p))
            out[p] = -1 if value is None else int(value)
        return out
    finally:
        await consumer.stop()
