"""memory: RSS of a worker process after 100k and after 1M records.

One worker runs in a child process with an in-process null LLM client (answers at
once, a fixed 80-word text) so that the real Kafka path -- consume, stage, produce,
commit -- runs as fast as it can. The parent feeds the input topic (at most
``--lead`` records ahead of the worker's committed offsets) and reads the child's
RSS from /proc when the committed count passes each checkpoint. Goal: growth from
the first to the second checkpoint < 10 % and RSS < 300 MB.

If the second checkpoint is not reached within ``--max-s``, the largest count
reached is measured instead and the output says so.

Run: ``streamsynth bench memory [--checkpoints 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from streamsynth.llm.types import ChatRequest, ChatResult, Usage
from streamsynth.local.broker import EmbeddedBroker, create_topics

GOAL_GROWTH = 0.10
GOAL_RSS_MB = 300.0
_ANSWER = " ".join(["synthetic"] * 80)


class NullClient:
    """An AsyncLLMClient that answers at once: the pipeline's own cost is what is left."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        return ChatResult(
            texts=[_ANSWER] * request.config.n,
            finish_reasons=["stop"] * request.config.n,
            usage=Usage(prompt_tokens=100, completion_tokens=80),
            model=request.model,
        )

    async def aclose(self) -> None:
        return None


# -- child: the worker with the null client --------------------------------------------


async def _child(config: Path) -> int:
    from streamsynth.config import load_settings
    from streamsynth.kafka.worker import Worker
    from streamsynth.logging import configure_logging

    settings = load_settings(config)
    configure_logging(settings.logging)
    worker = Worker(settings, client=NullClient())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    await worker.run()
    return worker.exit_code


# -- parent ----------------------------------------------------------------------------


class Committed:
    """Reads a group's committed offsets with one long-lived consumer (never joins)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        from aiokafka import TopicPartition

        from streamsynth.kafka.connection import KafkaConnection

        self._consumer = KafkaConnection(bootstrap_servers=bootstrap).consumer(group_id=group)
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    async def start(self) -> None:
        await self._consumer.start()

    async def total(self) -> int:
        offsets = await asyncio.gather(*(self._consumer.committed(tp) for tp in self._tps))
        return sum(o or 0 for o in offsets)

    async def stop(self) -> None:
        await self._consumer.stop()


async def _feed(
    boot: str,
    topic: str,
    total: int,
    pool: list[str],
    progress: Committed,
    lead: int,
    partitions: int,
) -> None:
    """Produce ``total`` records in chunks, never more than ``lead`` ahead of the commits."""
    chunk = 20_000
    sent = 0
    while sent < total:
        # Polling, not an event: the commits happen in another process.
        while sent - await progress.total() > lead:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        n = min(chunk, total - sent)
        recs = ({"id": f"m-{i}", "text": pool[i % len(pool)]} for i in range(sent, sent + n))
        await c.produce(boot, topic, recs, partitions=partitions)
        sent += n


async def run(args: argparse.Namespace) -> dict[str, Any]:
    checkpoints = sorted(int(x) for x in args.checkpoints.split(","))
    rng = random.Random(args.seed)
    pool = [c.make_text(rng, args.words) for _ in range(1000)]
    with EmbeddedBroker() as broker:
        boot = broker.bootstrap_servers
        await create_topics(boot, {"docs": args.partitions, "out": args.partitions, "dlq": 1})
        settings = c.worker_settings(
            bootstrap=boot,
            base_url="http://127.0.0.1:9/v1",  # never called: the null client answers
            group="memory",
            concurrency=args.concurrency,
            max_tokens=256,
        )
        worker = c.WorkerProcess(settings, module="benchmarks.bench_memory", extra_args=["--child"])
        worker.start()
        progress = Committed(boot, "memory", "docs", args.partitions)
        await progress.start()
        feeder: asyncio.Task[None] | None = None
        try:
            feeder = asyncio.create_task(
                _feed(boot, "docs", checkpoints[-1], pool, progress, args.lead, args.partitions)
            )
            result = await _observe(worker, progress, checkpoints, args.max_s, feeder)
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder
            result_code = worker.stop()
            await progress.stop()
    result["worker_exit_code"] = result_code
    return result


async def _observe(
    worker: c.WorkerProcess,
    progress: Committed,
    checkpoints: list[int],
    max_s: float,
    feeder: asyncio.Task[None],
) -> dict[str, Any]:
    """Sample RSS until every checkpoint is passed or ``max_s`` runs out."""
    t0 = time.monotonic()
    samples: list[tuple[float, int, float]] = []  # (seconds, committed, rss MB)
    marks: dict[str, dict[str, float]] = {}
    pending = list(checkpoints)
    done = 0
    while pending and time.monotonic() - t0 < max_s:
        if not worker.alive():
            raise RuntimeError(f"worker exited early:\n{worker.log_tail()}")
        if feeder.done() and feeder.exception() is not None:
            raise RuntimeError(f"feeding failed: {feeder.exception()!r}")
        done = await progress.total()
        rss_mb = c.rss_bytes(worker.pid) / 2**20
        elapsed = time.monotonic() - t0
        samples.append((round(elapsed, 1), done, round(rss_mb, 1)))
        while pending and done >= pending[0]:
            marks[str(pending.pop(0))] = {"committed": done, "rss_mb": rss_mb, "at_s": elapsed}
        await asyncio.sleep(0.5)
    reached_all = not pending
    if not reached_all:  # measure the largest count that fit in the time
        rss_mb = c.rss_bytes(worker.pid) / 2**20
        marks[f"reached_{done}"] = {"committed": done, "rss_mb": rss_mb, "at_s": max_s}
    elapsed = time.monotonic() - t0
    return {
        "checkpoints": marks,
        "reached_all_checkpoints": reached_all,
        "records_committed": done,
        "elapsed_s": elapsed,
        "records_per_s": done / elapsed if elapsed > 0 else 0.0,
        "peak_rss_mb": max((s[2] for s in samples), default=0.0),
        "samples": samples[:: max(1, len(samples) // 60)],
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> dict[str, Any]:
    marks = list(r["checkpoints"].items())
    first, last = marks[0][1], marks[-1][1]
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] if len(marks) > 1 else 0.0
    span = last["at_s"] - first["at_s"]
    rate = (last["committed"] - first["committed"]) / span if span > 0 else 0.0
    ok = growth < GOAL_GROWTH and r["peak_rss_mb"] < GOAL_RSS_MB
    rows = [[name, m["committed"], m["rss_mb"], m["at_s"]] for name, m in marks]
    notes = [
        "Worker subprocess with an in-process null LLM client (instant answers) through the "
        f"real Kafka path; {args.partitions} partitions, concurrency {args.concurrency}; "
        f"peak RSS {r['peak_rss_mb']:.0f} MB; {rate:,.0f} records/s between the checkpoints.",
        f"Growth {marks[0][0]} -> {marks[-1][0]}: {growth * 100:+.1f} % "
        f"(goal < {GOAL_GROWTH * 100:.0f} %, RSS < {GOAL_RSS_MB:.0f} MB): "
        + ("MET" if ok else "NOT MET"),
    ]
    if not r["reached_all_checkpoints"]:
        notes.append(
            f"The last checkpoint was not reached within {args.max_s:.0f} s: the second row is "
            f"the largest count reached ({r['records_committed']:,})."
        )
    c.print_table(
        "memory: worker RSS vs records processed",
        ["checkpoint", "records committed", "RSS MB", "at s"],
        rows,
        notes,
    )
    return {"growth": growth, "goal_met": ok, "records_per_s_between": rate, "notes": notes}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsynth bench memory", description=__doc__)
    p.add_argument("--checkpoints", default="100000,1000000", help="record counts to sample at")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--words", type=int, default=100, help="mean words per document")
    p.add_argument("--lead", type=int, default=100_000, help="max records produced ahead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=500.0, help="time allowed for processing")
    p.add_argument("--out-dir", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    summary = report(args, result)
    payload = {"goal_growth": GOAL_GROWTH, "goal_rss_mb": GOAL_RSS_MB, **result, **summary}
    c.save_result("memory", args, payload)
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        from streamsynth.config import load_settings
        from streamsynth.engine.loop import run as run_loop

        cfg = Path(sys.argv[sys.argv.index("--config") + 1])
        # On the loop `streamsynth run` would take for this config (worker.event_loop).
        kind = load_settings(cfg).worker.event_loop
        raise SystemExit(run_loop(_child(cfg), kind=kind))
    c.run_main(main)
