"""llm-bound: does one worker keep its LLM concurrency full, Kafka to Kafka?

An LLM-bound pipeline's ceiling is ``concurrency / mean latency`` records/s. One
worker (``python -m streamsynth.kafka``, a child process, as deployed) reads the
documents from an embedded broker, calls the simulator (a separate process;
lognormal latency, median 0.5 s, p99 5 s) at concurrency 256 and writes results
back. Goal: throughput / (concurrency / mean latency) >= 0.95.

Mean latency is the mean of the draws the simulator actually made in this run:
with no faults its seeded RNG draws one latency per request and nothing else, so
replaying it with the same seed gives exactly those draws (the analytic lognormal
mean is printed beside it). Throughput is measured over the 10-90 % completion
window (a stream's sustained rate); the end-to-end rate, which includes the final
drain of a heavy tail (the slowest of 20k draws is ~20 s), is reported with the
ideal makespan of a perfect 256-slot client on the same draws for comparison.

Run: ``streamsynth bench llm-bound [--records N] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from streamsynth.local.broker import EmbeddedBroker, create_topics, free_port
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess

GOAL = 0.95


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latency = LatencyModel("lognormal", median_s=args.median_s, p99_s=args.p99_s)
    docs = c.make_documents(args.records, seed=args.seed, mean_words=args.words)
    with (
        EmbeddedBroker() as broker,
        SimulatorProcess(SimulatorConfig(latency=latency, seed=args.seed)) as sim,
    ):
        boot = broker.bootstrap_servers
        await create_topics(boot, {"docs": args.partitions, "out": args.partitions, "dlq": 1})
        watcher = c.Watcher(boot, "out", "dlq")
        await watcher.start()
        worker = c.WorkerProcess(
            c.worker_settings(
                bootstrap=boot,
                base_url=sim.base_url,
                group="llm-bound",
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                metrics_port=free_port(),
            )
        )
        worker.start()
        try:
            # Warm-up records ask for 0 ms by marker, which takes no draw from the RNG.
            warm_s = await c.warm_up(
                boot, "docs", watcher, partitions=args.partitions, text="warm up [[sim:latency=0]]"
            )
            sim.reset_stats()  # count only the measured requests (warm-up took no draws)
            cpu0 = cpu_seconds(worker.pid)
            t0 = time.time()
            await c.produce(boot, "docs", docs, partitions=args.partitions)
            complete = await watcher.wait_for(len(docs), timeout_s=args.max_s)
            cpu = cpu_seconds(worker.pid) - cpu0
            rss = c.rss_bytes(worker.pid)
            stats = sim.stats()
            log = "" if complete else worker.log_tail()
        finally:
            code = worker.stop()
            await watcher.stop()
    draws = c.replay_draws(latency, args.seed, stats.requests)
    mean = statistics.fmean(draws) if draws else float("nan")
    elapsed = max(watcher.arrivals, default=t0) - t0
    ideal_rate = args.concurrency / mean
    steady = c.steady_rate(watcher.arrivals)
    e2e = len(watcher.arrivals) / elapsed if elapsed > 0 else 0.0
    makespan = c.ideal_makespan(draws, args.concurrency)
    return {
        "records": len(docs),
        "completed": watcher.done,
        "dlq": watcher.dlq,
        "complete": complete,
        "warm_up_s": warm_s,
        "elapsed_s": elapsed,
        "simulator_requests": stats.requests,
        "simulator_max_inflight": stats.max_inflight,
        "mean_latency_draws_s": mean,
        "mean_latency_analytic_s": c.lognormal_mean(args.median_s, args.p99_s),
        "max_latency_draw_s": max(draws, default=0.0),
        "ideal_records_per_s": ideal_rate,
        "records_per_s_steady": steady,
        "records_per_s_end_to_end": e2e,
        "ideal_makespan_s": makespan,
        "ratio": steady / ideal_rate,
        "ratio_end_to_end": e2e / ideal_rate,
        "ratio_to_ideal_makespan": makespan / elapsed if elapsed > 0 else 0.0,
        "worker_cpu_ms_per_record": 1000 * cpu / max(1, len(watcher.arrivals)),
        "worker_rss_mb": rss / 2**20,
        "worker_exit_code": code,
        "worker_log_tail": log,
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    rows = [
        [
            "steady (10-90 % window)",
            r["records_per_s_steady"],
            r["ideal_records_per_s"],
            f"{r['ratio']:.3f}",
        ],
        [
            "end to end (incl. drain)",
            r["records_per_s_end_to_end"],
            r["ideal_records_per_s"],
            f"{r['ratio_end_to_end']:.3f}",
        ],
        [
            "end to end vs perfect client",
            r["records"] / r["elapsed_s"] if r["elapsed_s"] else 0.0,
            r["records"] / r["ideal_makespan_s"] if r["ideal_makespan_s"] else 0.0,
            f"{r['ratio_to_ideal_makespan']:.3f}",
        ],
    ]
    notes = [
        f"{r['records']} records, {args.partitions} partitions, 1 worker subprocess, "
        f"concurrency {args.concurrency} (adaptive off), simulator in its own process.",
        f"Latency lognormal median {args.median_s} s, p99 {args.p99_s} s: mean of this run's "
        f"{r['simulator_requests']} draws {r['mean_latency_draws_s']:.3f} s (replayed from the "
        f"seeded RNG; analytic {r['mean_latency_analytic_s']:.3f} s), "
        f"max {r['max_latency_draw_s']:.1f} s.",
        f"Simulator max in flight {r['simulator_max_inflight']}; worker CPU "
        f"{r['worker_cpu_ms_per_record']:.2f} ms/record, RSS {r['worker_rss_mb']:.0f} MB; "
        f"completed {r['completed']} (DLQ {r['dlq']}).",
        f"Goal: steady ratio >= {GOAL}: " + ("MET" if r["ratio"] >= GOAL else "NOT MET"),
    ]
    c.print_table(
        "llm-bound: throughput / (concurrency / mean latency)",
        ["measure", "records/s", "ceiling records/s", "ratio"],
        rows,
        notes,
    )
    return notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsynth bench llm-bound", description=__doc__)
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--median-s", type=float, default=0.5)
    p.add_argument("--p99-s", type=float, default=5.0)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--words", type=int, default=100, help="mean words per document")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=400.0, help="give up after this long")
    p.add_argument("--out-dir", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    notes = report(args, result)
    c.save_result("llm-bound", args, {"goal": GOAL, "notes": notes, **result})
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    c.run_main(main)
