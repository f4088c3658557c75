"""eos: what exactly-once costs, side by side with at-least-once in one run.

One noida-db broker (it has transactions) and one LLM simulator process
(lognormal latency); the same LLM-bound workload runs twice, once per
``kafka.processing_guarantee``, each on fresh topics with a fresh worker process:

1. throughput: a backlog of ``--records`` documents; records / (time from the
   first produce until a ``read_committed`` consumer has seen every output). For
   exactly-once an output counts only once its transaction committed; outputs
   become visible in bursts, one per commit round, so a 10-90 % window rate
   would mostly measure the burst spacing: the whole makespan is compared instead;
2. output latency: ``--paced`` documents produced at a fixed rate below capacity
   (``--paced-rate``); latency = when a ``read_committed`` consumer receives the
   output minus when its input was produced. Exactly-once adds the wait for the
   record's transaction (up to ``commit_interval_s``, plus the commit) and for
   the slower records before it in its partition (outputs join the committed
   prefix in input order).

Both modes run at the same time, so a change in the machine's load hits both.
Goal: exactly-once throughput >= 0.9 of at-least-once.

Run: ``streamsynth bench eos [--records N] [--paced N] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import _common as c
from streamsynth.kafka.admin import create_topics
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.local.broker import free_port
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess
from streamsynth.local.noida import NoidaBroker

GOAL = 0.9
MODES = ("at_least_once", "exactly_once")


class CommittedWatcher:
    """Arrival times of outputs as a ``read_committed`` consumer receives them."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = KafkaConnection(bootstrap_servers=bootstrap).consumer(
            *topics,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        self.arrivals: dict[bytes, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=50, max_records=10_000)
            now = time.time()
            for msgs in batches.values():
                for m in msgs:
                    self.arrivals.setdefault(m.key or b"", now)

    async def wait_for(self, keys: set[bytes], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not keys <= self.arrivals.keys():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()


async def paced_produce(
    bootstrap: str, topic: str, docs: list[dict[str, Any]], rate: float
) -> dict[bytes, float]:
    """Send ``docs`` at ``rate`` per second; returns each key's send time."""
    producer = KafkaConnection(bootstrap_servers=bootstrap).producer(linger_ms=0)
    await producer.start()
    sent: dict[bytes, float] = {}
    try:
        t0 = time.monotonic()
        for i, rec in enumerate(docs):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key = str(rec["id"]).encode()
            sent[key] = time.time()
            await producer.send(topic, orjson.dumps(rec), key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def run_mode(
    args: argparse.Namespace, mode: str, boot: str, sim: SimulatorProcess
) -> dict[str, Any]:
    names = {k: f"eos-{mode}-{k}-{int(time.time() * 1000)}" for k in ("docs", "out", "dlq")}
    await create_topics(boot, {names["docs"]: args.partitions, names["out"]: args.partitions})
    await create_topics(boot, {names["dlq"]: 1})
    settings = c.worker_settings(
        bootstrap=boot,
        base_url=sim.base_url,
        group=f"bench-{mode}",
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        input_topic=names["docs"],
        output_topic=names["out"],
        dlq_topic=names["dlq"],
        metrics_port=free_port(),
        extra_worker={"commit_interval_s": args.commit_interval_s},
    )
    settings["kafka"]["processing_guarantee"] = mode
    settings["kafka"]["group_instance_id"] = f"bench-{mode}-0"
    watcher = CommittedWatcher(boot, [names["out"], names["dlq"]])
    await watcher.start()
    worker = c.WorkerProcess(settings)
    worker.start()
    try:
        warm = [{"id": f"warm-{p}", "text": "warm up [[sim:latency=0]]"} for p in range(8)]
        await c.produce(boot, names["docs"], warm, partitions=args.partitions)
        if not await watcher.wait_for({str(d["id"]).encode() for d in warm}, 60):
            raise RuntimeError(f"{mode}: warm-up failed:\n{worker.log_tail()}")
        docs = c.make_documents(args.records, seed=args.seed, mean_words=args.words)
        t_backlog = time.time()
        await c.produce(boot, names["docs"], docs, partitions=args.partitions)
        keys = {str(d["id"]).encode() for d in docs}
        complete = await watcher.wait_for(keys, args.max_s)
        last = max((watcher.arrivals[k] for k in keys if k in watcher.arrivals), default=0.0)
        rate = len(keys) / (last - t_backlog) if last > t_backlog else 0.0
        paced_rate = args.paced_rate
        paced = c.make_documents(args.paced, seed=args.seed + 1, id_prefix="paced")
        sent = await paced_produce(boot, names["docs"], paced, paced_rate)
        complete = await watcher.wait_for(set(sent), args.max_s) and complete
        latencies = sorted(
            watcher.arrivals[k] - t for k, t in sent.items() if k in watcher.arrivals
        )
        log = "" if complete else worker.log_tail()
    finally:
        code = worker.stop()
        await watcher.stop()
    return {
        "mode": mode,
        "complete": complete,
        "records_per_s": rate,
        "backlog_elapsed_s": last - t_backlog,
        "paced_rate": paced_rate,
        "latency_p50_s": _quantile(latencies, 0.5),
        "latency_p99_s": _quantile(latencies, 0.99),
        "latency_mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "worker_exit_code": code,
        "worker_log_tail": log,
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latency = LatencyModel("lognormal", median_s=args.median_s, p99_s=args.p99_s)
    with NoidaBroker() as broker, SimulatorProcess(SimulatorConfig(latency=latency)) as sim:
        # Side by side: both modes run at once, so a load change on the machine hits both.
        done = await asyncio.gather(
            *(run_mode(args, mode, broker.bootstrap_servers, sim) for mode in MODES)
        )
    results = dict(zip(MODES, done, strict=True))
    alo, eos = results["at_least_once"], results["exactly_once"]
    ratio = eos["records_per_s"] / alo["records_per_s"] if alo["records_per_s"] else 0.0
    return {"ratio": ratio, "complete": alo["complete"] and eos["complete"], **results}


def report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    rows = [
        [
            mode,
            r[mode]["records_per_s"],
            f"{r[mode]['latency_p50_s'] * 1000:.0f}",
            f"{r[mode]['latency_p99_s'] * 1000:.0f}",
        ]
        for mode in MODES
    ]
    notes = [
        f"{args.records} backlog + {args.paced} paced documents ({args.paced_rate:.0f}/s), "
        f"{args.partitions} partitions, concurrency {args.concurrency}, latency lognormal "
        f"median {args.median_s} s p99 {args.p99_s} s, commit_interval_s "
        f"{args.commit_interval_s}; both modes at the same time (same machine load), each with "
        "its own worker process and topics; one noida-db broker and one simulator process; "
        "read_committed reader.",
        f"Throughput ratio exactly_once / at_least_once: {r['ratio']:.3f} "
        f"(goal >= {GOAL}: {'MET' if r['ratio'] >= GOAL else 'NOT MET'}).",
    ]
    c.print_table(
        "eos: exactly-once vs at-least-once, same workload, one run",
        ["mode", "records/s (backlog)", "output latency p50 ms", "p99 ms"],
        rows,
        notes,
    )
    return notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsynth bench eos", description=__doc__)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--paced", type=int, default=2_000)
    p.add_argument("--paced-rate", type=float, default=50.0, help="documents/s, per mode")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--median-s", type=float, default=0.2)
    p.add_argument("--p99-s", type=float, default=1.0)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--words", type=int, default=60, help="mean words per document")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--commit-interval-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=300.0, help="give up after this long")
    p.add_argument("--out-dir", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    notes = report(args, result)
    c.save_result("eos", args, {"goal": GOAL, "notes": notes, **result})
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    c.run_main(main)
