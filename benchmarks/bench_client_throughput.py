"""Client throughput: requests/s from one process to a simulator in another process.

The simulator answers at 0 ms, so what is measured is the client's own cost per
request (serialization, HTTP, parsing) -- the ceiling one worker process can
drive. The target is 2,000 req/s for the raw aiohttp transport.

Run: ``python -m benchmarks.bench_client_throughput [--requests N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from streamsynth.llm.client import AsyncLLMClient
from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.transports.openai import AsyncOpenAIClient
from streamsynth.llm.types import ChatRequest, GenerationConfig
from streamsynth.local.llm_simulator import SimulatorConfig, SimulatorProcess

TARGET_RPS = 2000.0
PROMPT = (
    "Rewrite the following text in clear prose. Text: rivers carry sediment from the "
    "mountains to the sea, and the deltas they build change shape every season."
)


@dataclass
class ThroughputResult:
    client: str
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    ratio_to_target: float


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
) -> ThroughputResult:
    client = factory(base_url)
    try:
        sent, errors, elapsed = await measure(
            client, requests=args.requests, seconds=args.seconds, concurrency=args.concurrency
        )
    finally:
        await client.aclose()
    rps = sent / elapsed if elapsed > 0 else 0.0
    return ThroughputResult(name, sent, errors, elapsed, rps, rps / TARGET_RPS)


def _factories(concurrency: int) -> dict[str, Callable[[str], AsyncLLMClient]]:
    return {
        "aiohttp": lambda url: AiohttpChatClient(url, max_connections=concurrency),
        "openai": lambda url: AsyncOpenAIClient(url, max_connections=concurrency),
    }


def main(argv: list[str] | None = None) -> list[ThroughputResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--clients", default="aiohttp,openai")
    parser.add_argument("--output", default="bench-results/client_throughput.json")
    args = parser.parse_args(argv)
    factories = _factories(args.concurrency)
    results: list[ThroughputResult] = []
    with SimulatorProcess(SimulatorConfig()) as sim:
        for name in args.clients.split(","):
            result = asyncio.run(_run_one(name, factories[name], sim.base_url, args))
            results.append(result)
            print(
                f"{name:8s} {result.requests:6d} requests in {result.elapsed_s:6.2f} s = "
                f"{result.rps:7.0f} req/s ({result.ratio_to_target:.2f}x of "
                f"{TARGET_RPS:.0f} req/s), {result.errors} errors"
            )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


if __name__ == "__main__":
    main()
