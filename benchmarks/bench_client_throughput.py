"""Client throughput: requests/s from one process to a simulator in another process.

The simulator answers at 0 ms, so what is measured is the client's own cost per
request (serialization, HTTP, parsing) -- the ceiling one worker process can
drive. The target is 2,000 req/s for the default transport (``http1``). Each
transport (``http1``, ``aiohttp``, ``openai``) is measured at every depth of
``--concurrency`` (default 256 and 4,096) in the same run, with the client
process's CPU time per request, and the deepest figure is printed as a ratio of the
256 one (goal >= 0.7: depth must not collapse a transport). Every side runs on the
worker's event loop (``worker.event_loop: auto``: uvloop where installed).

Run: ``streamsynth bench client-throughput [--concurrency 256,4096] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from streamsynth.engine.loop import run as run_loop
from streamsynth.llm.client import AsyncLLMClient
from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.transports.http1 import Http1ChatClient
from streamsynth.llm.transports.openai import AsyncOpenAIClient
from streamsynth.llm.types import ChatRequest, GenerationConfig
from streamsynth.local.llm_simulator import SimulatorConfig, SimulatorProcess

TARGET_RPS = 2000.0
PROMPT = (
    "Rewrite the following text in clear prose. Text: rivers carry sediment from the "
    "mountains to the sea, and the deltas they build change shape every season."
)


DEPTH_GOAL = 0.7


@dataclass
class ThroughputResult:
    client: str
    concurrency: int
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    ratio_to_target: float
    cpu_us_per_request: float
    ratio_to_shallowest: float = 1.0


async def measure(
    client: AsyncLLMClient, *, requests: int, seconds: float, concurrency: int
) -> tuple[int, int, float]:
    """Send up to ``requests`` requests (or for ``seconds``) with ``concurrency`` workers."""
    request = ChatRequest(
        model="sim-model",
        messages=({"role": "user", "content": PROMPT},),
        config=GenerationConfig(max_tokens=64),
    )
    # Warm the pool so connection setup is not billed to the steady state.
    await asyncio.gather(*(client.chat(request) for _ in range(min(concurrency, requests))))
    sent = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            try:
                await client.chat(request)
            except Exception:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, errors, time.perf_counter() - start


async def _run_one(
    name: str,
    factory: Callable[[str], AsyncLLMClient],
    base_url: str,
    args: argparse.Namespace,
    concurrency: int,
) -> ThroughputResult:
    client = factory(base_url)
    try:
        cpu0 = time.process_time()
        sent, errors, elapsed = await measure(
            client, requests=args.requests, seconds=args.seconds, concurrency=concurrency
        )
        cpu = time.process_time() - cpu0  # the warm-up round is included: a small bias up
    finally:
        await client.aclose()
    rps = sent / elapsed if elapsed > 0 else 0.0
    cpu_us = 1e6 * cpu / max(1, sent + min(concurrency, args.requests))
    return ThroughputResult(name, concurrency, sent, errors, elapsed, rps, rps / TARGET_RPS, cpu_us)


def _factory(name: str, concurrency: int) -> Callable[[str], AsyncLLMClient]:
    if name == "http1":
        return lambda url: Http1ChatClient(url, max_connections=concurrency)
    if name == "aiohttp":
        return lambda url: AiohttpChatClient(url, max_connections=concurrency)
    if name == "openai":
        return lambda url: AsyncOpenAIClient(url, max_connections=concurrency)
    raise SystemExit(f"unknown client {name!r}: http1 | aiohttp | openai")


def main(argv: list[str] | None = None) -> list[ThroughputResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", default="256,4096", help="depths, comma-separated")
    parser.add_argument("--clients", default="http1,aiohttp,openai")
    parser.add_argument("--output", default="bench-results/client_throughput.json")
    args = parser.parse_args(argv)
    depths = [int(d) for d in str(args.concurrency).split(",") if d]
    results: list[ThroughputResult] = []
    with SimulatorProcess(SimulatorConfig()) as sim:
        for name in args.clients.split(","):
            first: ThroughputResult | None = None
            for depth in depths:
                factory = _factory(name, depth)
                result = run_loop(_run_one(name, factory, sim.base_url, args, depth))
                first = first or result
                result.ratio_to_shallowest = result.rps / first.rps if first.rps else 0.0
                results.append(result)
                print(
                    f"{name:8s} depth {depth:5d}: {result.requests:6d} requests in "
                    f"{result.elapsed_s:6.2f} s = {result.rps:7.0f} req/s "
                    f"({result.ratio_to_target:.2f}x of {TARGET_RPS:.0f}), "
                    f"{result.cpu_us_per_request:6.0f} us CPU/request, "
                    f"{result.ratio_to_shallowest:.2f} of depth {first.concurrency}"
                    + (f" (goal >= {DEPTH_GOAL})" if result is not first else "")
                    + f", {result.errors} errors"
                )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


if __name__ == "__main__":
    from benchmarks._common import run_main

    run_main(main)
