"""depth: one worker vs a bare HTTP client, thousands of requests in flight.

Against a simulator (its own process) that answers every request after a fixed
``--latency-s`` (1 s) with no capacity limit, Little's law bounds any client at
``depth / latency`` requests/s. At each depth (2,048 and 4,096 by default), in the
same run:

* a **bare client** -- aiohttp's ``ClientSession``, ``depth`` coroutines each
  sending one request after another -- gives the reference rate (what this
  machine's usual HTTP stack allows at that depth);
* a **bare transport** -- the same closed loop over the worker's own transport
  (``Http1ChatClient``, the default), without Kafka or stages -- shows what the
  worker's HTTP path alone reaches;
* **one worker** (``max_concurrency`` = depth, adaptive off,
  ``max_inflight_records`` = 2 x depth) reads documents from an embedded broker,
  calls the simulator and writes results back; its steady rate (10-90 % of
  completions) is compared with both.

Every side runs on uvloop (the worker with ``worker.event_loop: uvloop``), so the
comparison is between clients, not loops.

Goal: worker / bare client >= 0.9 at each depth.
Run: ``streamsynth bench depth [--depths 2048,4096] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import _common as c
from streamsynth.engine.loop import run as run_loop
from streamsynth.llm import ChatRequest, GenerationConfig, Http1ChatClient
from streamsynth.local.broker import EmbeddedBroker, create_topics
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess

GOAL = 0.9


async def closed_loop(
    send: Callable[[], Awaitable[object]], depth: int, seconds: float, warm_s: float
) -> float:
    """Requests/s of ``depth`` coroutines each calling ``send`` one after another,
    counted over ``seconds`` after ``warm_s``."""
    done = 0
    counting = False
    stop = time.monotonic() + warm_s + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await send()
            if counting:
                done += 1

    tasks = [asyncio.ensure_future(loop()) for _ in range(depth)]
    await asyncio.sleep(warm_s)
    counting, t0 = True, time.monotonic()
    await asyncio.sleep(seconds)
    counting, elapsed = False, time.monotonic() - t0
    await asyncio.gather(*tasks)
    return done / elapsed


async def bare_client(url: str, depth: int, seconds: float, warm_s: float) -> float:
    """aiohttp's ``ClientSession`` in a closed loop (the issue's reference client)."""
    body = {
        "model": "sim-model",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": c.PROMPT.format(document="a short text")}],
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send() -> None:
            async with session.post(url + "/chat/completions", json=body) as resp:
                await resp.read()

        return await closed_loop(send, depth, seconds, warm_s)


async def bare_transport(url: str, depth: int, seconds: float, warm_s: float) -> float:
    """The worker's default transport in the same closed loop, without Kafka or stages."""
    request = ChatRequest(
        model="sim-model",
        messages=({"role": "user", "content": c.PROMPT.format(document="a short text")},),
        config=GenerationConfig(max_tokens=32),
    )
    client = Http1ChatClient(url, max_connections=depth)
    try:
        return await closed_loop(lambda: client.chat(request), depth, seconds, warm_s)
    finally:
        await client.aclose()


async def worker_rate(url: str, depth: int, records: int, args: argparse.Namespace) -> float:
    docs = c.make_documents(records, seed=args.seed, mean_words=40)
    with EmbeddedBroker() as broker:
        boot = broker.bootstrap_servers
        await create_topics(boot, {"docs": args.partitions, "out": args.partitions, "dlq": 1})
        watcher = c.Watcher(boot, "out", "dlq")
        await watcher.start()
        settings = c.worker_settings(
            bootstrap=boot,
            base_url=url,
            group=f"depth-{depth}",
            concurrency=depth,
            max_tokens=32,
            extra_worker={"max_inflight_records": 2 * depth, "event_loop": "uvloop"},
        )
        worker = c.WorkerProcess(settings)
        worker.start()
        try:
            await c.warm_up(boot, "docs", watcher, partitions=args.partitions, text="warm up")
            await c.produce(boot, "docs", docs, partitions=args.partitions)
            if not await watcher.wait_for(len(docs), timeout_s=args.max_s):
                raise RuntimeError("worker did not finish:\n" + worker.log_tail())
        finally:
            worker.stop()
            await watcher.stop()
    return c.steady_rate(watcher.arrivals)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    latency = LatencyModel("fixed", fixed_s=args.latency_s)
    rows: list[dict[str, Any]] = []
    with SimulatorProcess(SimulatorConfig(latency=latency)) as sim:
        for depth in args.depths:
            warm = 2 * args.latency_s
            bare = await bare_client(sim.base_url, depth, args.seconds, warm_s=warm)
            own = await bare_transport(sim.base_url, depth, args.seconds, warm_s=warm)
            records = int(depth / args.latency_s * args.seconds)
            worker = await worker_rate(sim.base_url, depth, records, args)
            little = depth / args.latency_s
            rows.append(
                {
                    "depth": depth,
                    "records": records,
                    "littles_law_per_s": little,
                    "bare_client_per_s": bare,
                    "bare_transport_per_s": own,
                    "worker_per_s": worker,
                    "bare_vs_little": bare / little,
                    "worker_vs_little": worker / little,
                    "ratio": worker / bare if bare else 0.0,
                    "worker_vs_transport": worker / own if own else 0.0,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamsynth bench depth", description=__doc__)
    p.add_argument("--depths", default="2048,4096")
    p.add_argument("--latency-s", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per side")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="2,048 only, 5 s per side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=300.0)
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    args.depths = [int(d) for d in str(args.depths).split(",") if d]
    if args.quick:
        args.depths, args.seconds = [2048], 5.0
    rows = run_loop(run(args), kind="uvloop")  # the loop the benchmark's worker runs on
    table = [
        [r["depth"], r["littles_law_per_s"], r["bare_client_per_s"], r["bare_transport_per_s"],
         r["worker_per_s"], f"{r['bare_vs_little']:.2f}", f"{r['worker_vs_little']:.2f}",
         f"{r['ratio']:.3f}", f"{r['worker_vs_transport']:.3f}"]
        for r in rows
    ]  # fmt: skip
    met = all(r["ratio"] >= GOAL for r in rows)
    notes = [
        f"Fixed {args.latency_s} s server (own process), no capacity limit; one worker, "
        "adaptive off, vs a bare aiohttp client and a bare http1 transport in the same run "
        "(loop: uvloop).",
        f"Goal: worker / bare client >= {GOAL} at every depth: " + ("MET" if met else "NOT MET"),
    ]
    c.print_table(
        "depth: one worker vs a bare client",
        ["in flight", "Little's law/s", "bare aiohttp/s", "bare http1/s", "worker/s", "bare/LL",
         "worker/LL", "worker/bare", "worker/http1"],
        table,
        notes,
    )  # fmt: skip
    c.save_result("depth", args, {"goal": GOAL, "notes": notes, "rows": rows})
    return 0


if __name__ == "__main__":
    c.run_main(main)
