"""Engine throughput: Kafka -> one custom stage (null LLM client) -> Kafka, one worker.

The client answers instantly in-process, so what is measured is the worker's own
cost per record: fetch, decode, stage, output build, produce with acks=all,
offset tracking and commits. It runs on uvloop where installed (``--event-loop auto``,
the default; ``asyncio`` for the worker's default loop), with the collector set up
as ``streamsynth run`` sets it (:func:`~streamsynth.kafka.runtime.tune_collector`).
The broker (embedded Tansu unless KAFKA_BOOTSTRAP_SERVERS is set) shares the
machine. The goal is 30,000 records/s on one core.

In the same run it measures the record path alone, without Kafka (decode, the stage,
routing with its output JSON and ids, accounting; each output dropped at once), so the
figure splits into that path and the rest (fetch, the task and window, produce, acks,
commits, the loop).

Run: ``python -m benchmarks.bench_engine [--records N] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from streamsynth.config import Settings, settings_from_dict
from streamsynth.engine.loop import LoopKind, loop_factory
from streamsynth.engine.loop import run as run_loop
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.kafka.processing import StageRunner
from streamsynth.kafka.records import BadRecord, decode_value
from streamsynth.kafka.routing import Router
from streamsynth.kafka.runtime import tune_collector
from streamsynth.kafka.worker import StageSpec, Worker
from streamsynth.llm.types import ChatRequest, ChatResult, Usage
from streamsynth.local.broker import create_topics, kafka_bootstrap
from streamsynth.metrics.health import HealthState
from streamsynth.metrics.registry import Metrics
from streamsynth.stages.synthetic import SyntheticStage

TARGET_RPS = 30_000.0
PARTITIONS = 4


class NullClient:
    """An AsyncLLMClient that answers at once with a fixed text."""

    def __init__(self) -> None:
        self._usage = Usage(prompt_tokens=32, completion_tokens=8)

    async def chat(self, request: ChatRequest) -> ChatResult:
        return ChatResult(["a short synthetic answer"], ["stop"], self._usage, request.model)

    async def aclose(self) -> None:
        return None


@dataclass
class EngineResult:
    records: int
    elapsed_s: float
    records_per_s: float
    #: Records per CPU-second of this process (the broker's CPU excluded).
    records_per_cpu_s: float
    cpu_s: float
    target_records_per_s: float
    ratio_to_target: float
    max_inflight_records: int
    max_batch_records: int
    broker: str
    #: The loop's class (uvloop's Loop or asyncio's).
    event_loop: str
    #: CPU microseconds of one trivial task (created, run, awaited) on this loop and
    #: machine, measured in the same run: the floor of a task per record, and a yardstick
    #: for comparing figures across machines.
    task_cpu_us: float
    #: CPU microseconds per record of the record path alone, measured in the same run
    #: without Kafka (see the module doc): the part of the figure the stage and its
    #: output make; the rest is the worker's plumbing.
    record_path_cpu_us: float
    #: CPU microseconds per record in the worker, less the record path.
    plumbing_cpu_us: float
    python: str
    cpu_count: int | None


def bench_settings(bootstrap: str, base: str, *, inflight: int, batch: int) -> Settings:
    return settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"{base}.group",
                "input_topic": f"{base}.in",
                "dlq_topic": f"{base}.dlq",
                "linger_ms": 5,
            },
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "null"},
            "stages": [
                {
                    "task": "custom",
                    "name": "summary",
                    "prompt": "Summarize:\n\n{document}",
                    "output_field": "summary",
                    "output_topic": f"{base}.out",
                }
            ],
            "worker": {
                "max_batch_records": batch,
                "max_inflight_records": inflight,
                "max_batch_wait_ms": 20,
                "commit_interval_s": 1.0,
            },
            "metrics": {"enabled": False},
        }
    )


def document(i: int) -> tuple[bytes, bytes]:
    """The key and value of input record ``i``."""
    text = "Rivers carry sediment from the mountains to the sea, and deltas change shape. "
    return f"doc-{i}".encode(), orjson.dumps({"id": f"doc-{i}", "text": f"{text}{i}"})


def null_stage() -> SyntheticStage:
    return SyntheticStage(
        name="summary",
        prompt="Summarize:\n\n{document}",
        output_field="summary",
        client=NullClient(),
        model_name="null",
    )


async def fill_topic(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaConnection(bootstrap_servers=bootstrap).producer(
        acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = []
        for i in range(n):
            key, value = document(i)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def task_cost_us(n: int = 20_000) -> float:
    """CPU microseconds per trivial task: ``n`` created at once, then awaited."""

    async def nothing() -> None:
        return None

    loop = asyncio.get_running_loop()
    start = time.process_time()
    await asyncio.gather(*[loop.create_task(nothing()) for _ in range(n)])
    return (time.process_time() - start) / n * 1e6


async def record_path_us(settings: Settings, n: int = 20_000, reps: int = 3) -> float:
    """CPU microseconds per record of the record path without Kafka, best of ``reps``.

    The worker's own code for one record, as its task runs it (decode, the stages,
    routing, accounting), on ``n`` records built as the topic's; nothing is published.
    """
    spec = StageSpec("summary", null_stage(), settings.stages[0].output_topic)
    router = Router.from_settings(settings)
    runner = await StageRunner.start(settings, [spec], router, Metrics(), HealthState())
    topic = settings.kafka.input_topic
    msgs = []
    for i in range(n):
        key, value = document(i)
        size = (len(key), len(value))
        msgs.append(ConsumerRecord(topic, i % PARTITIONS, i, 0, 0, key, value, None, *size, ()))
    text_field, max_bytes = settings.record.text_field, settings.record.max_record_bytes
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        for msg in msgs:
            doc = decode_value(msg.value, text_field=text_field, max_bytes=max_bytes)
            if isinstance(doc, BadRecord):
                raise AssertionError(f"the benchmark's own record is bad: {doc.reason}")
            runner.account(msg, await runner.process(msg, doc))
        best = min(best, time.process_time() - start)
    await runner.teardown()
    return best / n * 1e6


def produced_total(spec: StageSpec) -> float:
    """Outputs acknowledged so far: the worker's own counter child, read without a scrape."""
    return 0.0 if spec.produced is None else float(spec.produced.value)


async def run(records: int, *, inflight: int, batch: int, timeout_s: float) -> EngineResult:
    with kafka_bootstrap() as bootstrap:
        base = f"bench-{uuid.uuid4().hex[:8]}"
        settings = bench_settings(bootstrap, base, inflight=inflight, batch=batch)
        await create_topics(
            bootstrap, {f"{base}.in": PARTITIONS, f"{base}.out": PARTITIONS, f"{base}.dlq": 1}
        )
        await fill_topic(bootstrap, f"{base}.in", records)
        spec = StageSpec("summary", null_stage(), f"{base}.out")
        worker = Worker(settings, stages=[spec], metrics=Metrics())
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            # The clock starts at the first output, so group join time is not billed.
            deadline = time.monotonic() + timeout_s
            # Sampling a counter for a measurement, not synchronising on it.
            while produced_total(spec) == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            start = time.perf_counter()
            cpu_start = time.process_time()
            first = produced_total(spec)
            while produced_total(spec) < records and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            done = produced_total(spec) - first
        finally:
            worker.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        rps = done / elapsed if elapsed > 0 else 0.0
        task_us = min([await task_cost_us() for _ in range(3)])
        path_us = await record_path_us(settings)
        worker_us = cpu / done * 1e6 if done > 0 else 0.0
        broker_kind = "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "embedded"
        return EngineResult(
            records=int(done),
            elapsed_s=round(elapsed, 3),
            records_per_s=round(rps, 1),
            records_per_cpu_s=round(done / cpu, 1) if cpu > 0 else 0.0,
            cpu_s=round(cpu, 3),
            target_records_per_s=TARGET_RPS,
            ratio_to_target=round(rps / TARGET_RPS, 3),
            max_inflight_records=inflight,
            max_batch_records=batch,
            broker=broker_kind,
            event_loop=type(asyncio.get_running_loop()).__module__,
            task_cpu_us=round(task_us, 2),
            record_path_cpu_us=round(path_us, 2),
            plumbing_cpu_us=round(max(0.0, worker_us - path_us), 2),
            python=platform.python_version(),
            cpu_count=os.cpu_count(),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto",
        help="the loop to run on (default: auto, uvloop where installed, as the worker's "
        "worker.event_loop defaults to)",
    )  # fmt: skip
    parser.add_argument("--profile", default=None, help="write cProfile stats to this file")
    parser.add_argument("--out", default="bench-results/engine.json")
    args = parser.parse_args(argv)
    coro = run(args.records, inflight=args.inflight, batch=args.batch, timeout_s=args.timeout)
    kind: LoopKind = args.event_loop
    loop_factory(kind)  # an unavailable loop fails here, before the broker starts
    tune_collector()  # as the worker process does before its loop starts
    if args.profile:
        profiler = cProfile.Profile()
        result = profiler.runcall(run_loop, coro, kind=kind)
        profiler.dump_stats(args.profile)
    else:
        result = run_loop(coro, kind=kind)
    print(
        f"engine ({result.event_loop}): {result.records} records in {result.elapsed_s:.2f}s = "
        f"{result.records_per_s:,.0f} records/s "
        f"({result.ratio_to_target:.2f}x the {TARGET_RPS:,.0f} records/s goal); "
        f"{result.records_per_cpu_s:,.0f} records per CPU-second of the worker "
        f"({1e6 / result.records_per_cpu_s if result.records_per_cpu_s else 0:.0f} us per "
        f"record; a bare task costs {result.task_cpu_us:.1f} us on this machine)"
    )
    print(
        f"  of which the record path without Kafka (decode, stage, routing and outputs): "
        f"{result.record_path_cpu_us:.1f} us; the rest (fetch, task, window, produce, acks, "
        f"commits, loop): {result.plumbing_cpu_us:.1f} us"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = asdict(result)
    out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    from benchmarks._common import run_main

    run_main(main)
