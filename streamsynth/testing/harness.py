"""Run a worker and read its topics: the one harness of the tests, benchmarks and demo.

* :class:`WorkerProcess` starts a worker the way production does (``streamsynth run
  --config FILE``, the command of the Dockerfile, compose and Helm chart), in a child
  process with its own log file, and stops it (SIGTERM, then SIGKILL).
* :func:`produce` sends documents; :class:`TopicReader` reads topics from the
  beginning without joining a group; :class:`Watcher` counts what arrives, in the
  background, for throughput measurements; :func:`committed` reads a group's offsets.
* :func:`worker_config` is the config the integration tests start from.

Every Kafka client is built from :class:`~streamsynth.kafka.connection.KafkaConnection`
(pass one, or a bootstrap string for a plaintext broker on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
import yaml

from streamsynth.kafka import admin
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.local.process import dies_with_parent, stop_process

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

Target = KafkaConnection | str
#: (key, value) as sent; or a JSON document, sent with its ``id`` as the key.
Record = tuple[bytes | None, bytes | None] | Mapping[str, Any]

_counter = itertools.count()


def connection(target: Target) -> KafkaConnection:
    return (
        target if isinstance(target, KafkaConnection) else KafkaConnection(bootstrap_servers=target)
    )


def unique(prefix: str) -> str:
    """A topic or group name no other test (or earlier run on the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_counter)}"


def child_env(**extra: str) -> dict[str, str]:
    """A worker's environment: ours without ``STREAMSYNTH_*`` overrides (the config file rules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNTH_")}
    env.update(extra)
    return env


# -- configuration -------------------------------------------------------------------------


@dataclass
class Topics:
    """A fresh set of topic names and a group for one test."""

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

    async def create(self, target: Target, partitions: int = 4) -> None:
        spec = {self.input: partitions}
        spec.update({name: partitions for name in self.all_outputs()})
        await admin.create_topics(connection(target), spec)


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
    """A worker config with short timeouts; ``section__key=value`` overrides one setting.

    Tansu answers a JoinGroup after about half the session timeout, hence 6 s.
    """
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


# -- the worker process --------------------------------------------------------------------

#: ``streamsynth run``, through the interpreter running us (the right virtualenv).
RUN_COMMAND = ("-m", "streamsynth.cli.main", "run")
#: How much of a worker's log a failed exit shows (the shutdown's last dozen lines or so).
EXIT_LOG_TAIL_CHARS = 6000
_METRICS_PORT = re.compile(r'"(?:msg|message)":\s*"metrics server listening".*?"port":\s*(\d+)')


@dataclass
class WorkerProcess:
    """A worker in a child process: ``streamsynth run --config FILE`` by default.

    ``workdir`` holds the config and the log (a temporary directory when None, removed
    by :meth:`stop` after a clean exit; a failed worker's log is kept for reading).
    ``module`` runs ``python -m MODULE --config FILE *extra_args`` instead.
    """

    config: dict[str, Any]
    workdir: Path | None = None
    name: str = "worker"
    module: str | None = None
    extra_args: Sequence[str] = ()
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _own_dir: bool = field(default=False, init=False, repr=False)

    def _directory(self) -> Path:
        if self.workdir is None:  # made when first needed, not at construction
            self.workdir = Path(tempfile.mkdtemp(prefix=f"streamsynth-{self.name}-"))
            self._own_dir = True
        return self.workdir

    @property
    def config_path(self) -> Path:
        return self._directory() / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        return self._directory() / f"{self.name}.log"

    def command(self) -> list[str]:
        entry = ["-m", self.module] if self.module else list(RUN_COMMAND)
        return [sys.executable, *entry, "--config", str(self.config_path), *self.extra_args]

    def start(self) -> WorkerProcess:
        self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env if self.env is not None else child_env(),
                cwd=self.cwd,
                preexec_fn=dies_with_parent(),  # a killed test run leaves no worker behind
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(signum)

    def kill(self) -> None:
        assert self.proc is not None, "not started"
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout=timeout_s)

    def wait_exit(self, timeout_s: float, expect: int | None = None) -> int:
        """The exit status within ``timeout_s`` (``expect``: it must be that one).

        A worker still running then, or exiting otherwise, fails with an
        AssertionError carrying the tail of its log, so the failure says which
        shutdown step it hung in or what it reported. A worker still running is
        left so: :meth:`stop` ends it.
        """
        try:
            code = self.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {timeout_s:g} s later; its log ends:\n"
                f"{self.log_tail(EXIT_LOG_TAIL_CHARS)}"
            ) from None
        if expect is not None and code != expect:
            raise AssertionError(
                f"{self.name} exited {code}, not {expect}; its log ends:\n"
                f"{self.log_tail(EXIT_LOG_TAIL_CHARS)}"
            )
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after ``timeout_s``; the exit code (None if
        never started). Safe to call again."""
        code = stop_process(self.proc, timeout_s=timeout_s)
        if self._own_dir and code == 0 and self.workdir is not None:
            with contextlib.suppress(OSError):
                self.config_path.unlink(missing_ok=True)
                self.log_path.unlink(missing_ok=True)
                self.workdir.rmdir()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` in the log; fails when the worker exits first."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        while True:
            match = regex.search(self.log_text())
            if match:
                return match
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {regex.pattern!r} in {timeout_s} s")
            time.sleep(0.05)

    def metrics_port(self, timeout_s: float = 60.0) -> int:
        """The port the worker's metrics server bound (config ``metrics.port: 0``; JSON logs)."""
        return int(self.wait_for_log(_METRICS_PORT, timeout_s).group(1))

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def doc(i: int, text: str | None = None, **extra: Any) -> tuple[bytes, bytes]:
    """(key, value) of input document ``i``."""
    body = {"id": f"doc-{i}", "text": text or f"document number {i} about topic {i % 17}"}
    body.update(extra)
    return f"doc-{i}".encode(), orjson.dumps(body)


def _key_value(record: Record, index: int) -> tuple[bytes | None, bytes | None]:
    if isinstance(record, Mapping):
        return str(record.get("id", index)).encode(), orjson.dumps(record)
    return record


async def produce(
    target: Target, topic: str, records: Iterable[Record], *, partitions: int | None = None
) -> int:
    """Send records (acks=all) and wait for every ack; the number sent.

    With ``partitions``, record ``i`` goes to partition ``i % partitions`` (an even
    spread); otherwise the key decides.
    """
    producer = connection(target).producer(
        acks="all", linger_ms=5, max_batch_size=262_144, max_request_size=32 * 1024 * 1024
    )
    await producer.start()
    sent = 0
    try:
        futures = []
        for record in records:
            key, value = _key_value(record, sent)
            part = sent % partitions if partitions else None
            futures.append(await producer.send(topic, value, key=key, partition=part))
            sent += 1
            if len(futures) >= 5_000:  # bound what waits in memory on a big run
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


# -- reading topics ------------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    timestamp_ms: int = -1

    def json(self) -> dict[str, Any]:
        return dict(orjson.loads(self.value or b"null"))

    def row(self) -> dict[str, Any]:
        """The value as a JSON object (a non-object under ``value``), headers under ``_headers``."""
        try:
            data = orjson.loads(self.value) if self.value is not None else {}
        except orjson.JSONDecodeError:
            data = {"value": (self.value or b"").decode("utf-8", errors="replace")}
        row = data if isinstance(data, dict) else {"value": data}
        row["_headers"] = dict(self.headers)
        return row


def _is_output(value: bytes) -> bool:
    """Whether a record's value is a worker's output (not a DLQ or filtered record)."""
    if value[:1] != b"{":
        return False
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    meta = data.get("streamsynth") if isinstance(data, dict) else None
    return isinstance(meta, dict) and "filtered" not in meta


class TopicReader:
    """Reads topics from the beginning without a group (assign + seek), incrementally.

    Every output record read (a JSON object whose ``streamsynth`` metadata has no
    ``filtered`` key; DLQ records carry the input's bytes) must match the output schema
    (``streamsynth.kafka.records.validate_output``), or :meth:`poll` raises;
    ``validate_outputs=False`` turns that off, ``validate`` also checks every record of
    the topics named, whatever it looks like. ``keep=False`` only counts.
    """

    def __init__(
        self,
        target: Target,
        topics: list[str],
        *,
        validate: Collection[str] = (),
        validate_outputs: bool = True,
        keep: bool = True,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        self.conn = connection(target)
        self.topics = topics
        self.validate = set(validate)
        self.validate_outputs = validate_outputs
        self.keep = keep
        self.isolation_level = isolation_level
        self.records: dict[str, list[Received]] = {t: [] for t in topics}
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = self.conn.consumer(
            group_id=None,
            isolation_level=self.isolation_level,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await self._consumer.start()
        tps = await _partitions(self._consumer, self.topics)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, timeout_ms: int = 200) -> int:
        """Fetch once; the number of new records."""
        from streamsynth.kafka.dlq import header_map
        from streamsynth.kafka.records import validate_output

        assert self._consumer is not None, "use 'async with TopicReader(...)'"
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        n = 0
        for tp, msgs in batch.items():
            for m in msgs:
                if m.value is not None and (
                    tp.topic in self.validate or (self.validate_outputs and _is_output(m.value))
                ):
                    validate_output(m.value)
                if self.keep:
                    got = Received(
                        tp.topic,
                        tp.partition,
                        m.offset,
                        m.key,
                        m.value,
                        header_map(m.headers),
                        m.timestamp,
                    )
                    self.records[tp.topic].append(got)
            self.counts[tp.topic] += len(msgs)
            n += len(msgs)
        return n

    async def until(
        self, done: Callable[[TopicReader], bool], timeout_s: float, what: str = ""
    ) -> None:
        """Poll until ``done(self)``; fail after ``timeout_s`` (bounded by time)."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}: {self.counts}"
                )
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
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                out.append(str(r.json()[field_name]))
        return out

    def keys(self, topic: str) -> list[str]:
        return [r.key.decode() if r.key is not None else "" for r in self.records[topic]]

    def rows(self, topic: str) -> list[dict[str, Any]]:
        return [r.row() for r in self.records[topic]]


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, waiting briefly for a just-created topic's metadata."""
    from aiokafka import TopicPartition

    for _ in range(100):
        await consumer.topics()
        parts = {t: consumer.partitions_for_topic(t) for t in topics}
        if all(parts.values()):
            return [TopicPartition(t, p) for t in topics for p in sorted(parts[t] or ())]
        await asyncio.sleep(0.05)
    raise AssertionError(f"topics without partitions: {[t for t, p in parts.items() if not p]}")


async def read_all(
    target: Target, topics: list[str], *, quiet_s: float = 1.5, max_s: float = 30.0
) -> TopicReader:
    """Everything in ``topics`` once nothing new arrives for ``quiet_s`` (writers stopped)."""
    async with TopicReader(target, topics, validate_outputs=False) as reader:
        await reader.settle(quiet_s=quiet_s, max_s=max_s)
    return reader


@dataclass
class Watcher:
    """Counts what arrives on an output and a DLQ topic, in the background, with the
    output records' produce times (``CreateTime``, seconds, this machine's clock): a
    throughput figure then excludes the watcher's own polling delay."""

    target: Target
    output_topic: str
    dlq_topic: str
    arrivals: list[float] = field(default_factory=list)
    dlq: int = 0
    _reader: TopicReader | None = None
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        # Counting only: a benchmark's 100k outputs are not parsed again here.
        self._reader = TopicReader(
            self.target, [self.output_topic, self.dlq_topic], validate_outputs=False
        )
        await self._reader.__aenter__()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        reader = self._reader
        assert reader is not None
        while True:
            if await reader.poll(timeout_ms=200):
                now = time.time()
                outputs = reader.records[self.output_topic]
                self.arrivals.extend(
                    r.timestamp_ms / 1000 if r.timestamp_ms > 0 else now for r in outputs
                )
                self.dlq += len(reader.records[self.dlq_topic])
                outputs.clear()  # counted; do not keep a big run's values in memory
                reader.records[self.dlq_topic].clear()
                self._changed.set()

    @property
    def done(self) -> int:
        return len(self.arrivals) + self.dlq

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` records (outputs + DLQ) were seen; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.done < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))
            if self._task is not None and self._task.done():
                self._task.result()  # surface a consumer failure
        return True

    def reset(self) -> None:
        self.arrivals.clear()
        self.dlq = 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            await self._reader.__aexit__(None, None, None)


async def committed(
    target: Target, group: str, topic: str, partitions: int | None = None
) -> dict[int, int]:
    """A group's committed offset per partition of ``topic`` (-1: none yet), read from
    outside the group; ``partitions`` limits it to partitions ``0..partitions-1``."""
    offsets = await admin.committed_offsets(connection(target), group, [topic])
    out = {tp.partition: -1 if off is None else int(off) for tp, off in offsets.items()}
    if partitions is not None:
        out = {p: out.get(p, -1) for p in range(partitions)}
    return out


async def committed_total(
    target: Target, group: str, topic: str, partitions: int | None = None
) -> int:
    """Records the group has committed on ``topic`` (the sum of its offsets)."""
    return sum(max(0, off) for off in (await committed(target, group, topic, partitions)).values())


async def warm_up(
    target: Target,
    input_topic: str,
    watcher: Watcher,
    *,
    partitions: int,
    text: str,
    timeout_s: float = 60.0,
) -> float:
    """One record per partition through the running worker(s); the seconds it took.

    Proves the group joined, every partition is assigned and the HTTP path works, so a
    measured run starts warm.
    """
    t0 = time.perf_counter()
    recs = [{"id": f"warmup-{p}", "text": text} for p in range(partitions)]
    await produce(target, input_topic, recs, partitions=partitions)
    if not await watcher.wait_for(partitions, timeout_s):
        raise RuntimeError(f"warm-up: {watcher.done}/{partitions} records came back")
    watcher.reset()
    return time.perf_counter() - t0


def parse_metrics(text: str, by: str = "") -> dict[str, dict[str, float]]:
    """Prometheus text -> ``{sample name: {value of label ``by``: value}}`` (summed over
    the other labels; ``by=""`` sums everything under the key ``""``)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            per = out.setdefault(sample.name, {})
            key = sample.labels.get(by, "") if by else ""
            per[key] = per.get(key, 0.0) + float(sample.value)
    return out


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> str:
    """GET ``/metrics`` (plain text)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as resp:
        return str(resp.read().decode())


__all__ = [
    "RUN_COMMAND",
    "Received",
    "Record",
    "Target",
    "TopicReader",
    "Topics",
    "Watcher",
    "WorkerProcess",
    "child_env",
    "committed",
    "committed_total",
    "connection",
    "custom_stage",
    "doc",
    "parse_metrics",
    "produce",
    "read_all",
    "scrape",
    "unique",
    "warm_up",
    "worker_config",
]
