"""scale: 1..N worker processes in one consumer group, LLM-bound.

Each worker's LLM concurrency is capped (``--concurrency``, adaptive off) and the
simulator (its own process) answers after a fixed latency, so one worker's ceiling
is concurrency / latency records/s and N workers should reach N times one
worker's rate. The topic has 12 partitions (an even split for 1, 2, 3 and 4
workers). This machine has 2 cores shared by the workers, broker and simulator,
so the per-worker rate is kept low (default 32 / 0.2 s = 160 records/s) for the
LLM latency, not the CPU, to be the bound. Goal: rate(N) >= 0.9 x N x rate(1).

Each N gets fresh topics and group; the run starts once every worker holds its
share of partitions (read from each worker's ``streamsynth_partitions_assigned``
gauge) and a warm-up record per partition came back. Rates are measured over the
10-90 % completion window.

Run: ``streamsynth bench scale [--max-workers 4] [--per-worker-records 3200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from streamsynth.local.broker import EmbeddedBroker, create_topics, free_port
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess

GOAL = 0.9


def assigned_partitions(port: int) -> int:
    """The worker's ``streamsynth_partitions_assigned`` gauge (summed over labels)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1
    total = 0.0
    for line in text.splitlines():
        if line.startswith("streamsynth_partitions_assigned"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def wait_balanced(ports: list[int], partitions: int, timeout_s: float) -> list[int]:
    """Wait until every worker holds partitions / N of them; return the split."""
    deadline = time.monotonic() + timeout_s
    share = partitions // len(ports)
    while True:
        split = await asyncio.gather(*(asyncio.to_thread(assigned_partitions, p) for p in ports))
        if all(s == share for s in split) or time.monotonic() > deadline:
            return list(split)
        await asyncio.sleep(0.25)


async def run_n(
    args: argparse.Namespace, boot: str, base_url: str, n: int, docs: list[dict[str, str]]
) -> dict[str, Any]:
    """Run ``n`` workers over ``docs`` and measure their combined rate."""
    topics = {"in": f"docs-{n}", "out": f"out-{n}", "dlq": f"dlq-{n}"}
    await create_topics(
        boot, {topics["in"]: args.partitions, topics["out"]: args.partitions, topics["dlq"]: 1}
    )
    watcher = c.Watcher(boot, topics["out"], topics["dlq"])
    await watcher.start()
    ports = [free_port() for _ in range(n)]
    workers = [
        c.WorkerProcess(
            c.worker_settings(
                bootstrap=boot,
                base_url=base_url,
                group=f"scale-{n}",
                input_topic=topics["in"],
                output_topic=topics["out"],
                dlq_topic=topics["dlq"],
                concurrency=args.concurrency,
                prompt=c.PROMPT,
                system_prompt=None,
                max_tokens=args.max_tokens,
                metrics_port=port,
            )
        )
        for port in ports
    ]
    try:
        for w in workers:
            w.start()
        split = await wait_balanced(ports, args.partitions, timeout_s=60)
        await c.warm_up(boot, topics["in"], watcher, partitions=args.partitions, text="warm up")
        t0 = time.time()
        await c.produce(boot, topics["in"], docs, partitions=args.partitions)
        complete = await watcher.wait_for(len(docs), timeout_s=args.max_s)
    finally:
        codes = [w.stop() for w in workers]
        await watcher.stop()
    elapsed = max(watcher.arrivals, default=t0) - t0
    return {
        "workers": n,
        "records": len(docs),
        "completed": watcher.done,
        "dlq": watcher.dlq,
        "complete": complete,
        "partition_split": split,
        "records_per_s_steady": c.steady_rate(watcher.arrivals),
        "records_per_s_end_to_end": len(watcher.arrivals) / elapsed if elapsed > 0 else 0.0,
        "exit_codes": codes,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latency = LatencyModel("fixed", fixed_s=args.latency_s)
    results = []
    with EmbeddedBroker() as broker, SimulatorProcess(SimulatorConfig(latency=latency)) as sim:
        for n in range(1, args.max_workers + 1):
            docs = c.make_documents(
                args.per_worker_records * n, seed=n, mean_words=args.words, id_prefix=f"n{n}"
            )
            res = await run_n(args, broker.bootstrap_servers, sim.base_url, n, docs)
            print(f"{n} worker(s): {res['records_per_s_steady']:.1f} records/s", flush=True)
            results.append(res)
    single = results[0]["records_per_s_steady"]
    for res in results:
        res["ratio"] = res["records_per_s_steady"] / (res["workers"] * single) if single else 0.0
    return {
        "per_worker_ceiling": args.concurrency / args.latency_s,
        "runs": results,
        "min_ratio": min(r["ratio"] for r in results),
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    rows = [
        [
            str(x["workers"]),
            x["records"],
            "/".join(str(s) for s in x["partition_split"]),
            x["records_per_s_steady"],
            x["workers"] * r["runs"][0]["records_per_s_steady"],
            f"{x['ratio']:.3f}",
            x["records_per_s_end_to_end"],
        ]
        for x in r["runs"]
    ]
    notes = [
        f"Fixed latency {args.latency_s} s, concurrency {args.concurrency} per worker (ceiling "
        f"{r['per_worker_ceiling']:.0f} records/s each), {args.partitions} partitions, "
        f"{args.per_worker_records} records per worker; worker subprocesses, one group per N.",
        f"Goal: rate(N) >= {GOAL} x N x rate(1) for every N: "
        + ("MET" if r["min_ratio"] >= GOAL else "NOT MET"),
    ]
    c.print_table(
        "scale: throughput of N workers in one group",
        ["workers", "records", "partitions", "records/s", "N x single", "ratio", "e2e rec/s"],
        rows,
        notes,
    )
    return notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsynth bench scale", description=__doc__)
    p.add_argument("--max-workers", type=int, default=4)
    p.add_argument("--per-worker-records", type=int, default=3200)
    p.add_argument("--concurrency", type=int, default=32, help="LLM concurrency per worker")
    p.add_argument("--latency-s", type=float, default=0.2)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--words", type=int, default=60, help="mean words per document")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-s", type=float, default=120.0, help="give up on one N after this")
    p.add_argument("--out-dir", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    notes = report(args, result)
    c.save_result("scale", args, {"goal": GOAL, "notes": notes, **result})
    return 0 if all(x["complete"] for x in result["runs"]) else 1


if __name__ == "__main__":
    c.run_main(main)
