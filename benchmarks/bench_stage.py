"""Stage benchmark: one 200-row batch through SyntheticStage at a bounded concurrency.

The simulator (another process) answers every request after a fixed 50 ms, so
the ideal time is ``ceil(rows / concurrency) x latency`` waves -- reported here as
``rows / concurrency x latency`` -- and the ratio to it is the engine's overhead.

Run: ``python -m benchmarks.bench_stage [--rows 200 --concurrency 64 --latency 0.05]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from streamsynth.engine.batch import DocumentBatch
from streamsynth.engine.stage import ERROR_COLUMN
from streamsynth.llm.client import AsyncLLMClient
from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess
from streamsynth.stages.synthetic import SyntheticStage

PROMPT = "Rewrite the following text in the style of a textbook.\n\nText: {document}"


class SemaphoreClient:
    """At most ``limit`` requests in flight (a stand-in for the real concurrency layer)."""

    def __init__(self, inner: AsyncLLMClient, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        # Created lazily: a semaphore must be made on the loop that uses it.
        self._semaphore: asyncio.Semaphore | None = None

    async def chat(self, request: ChatRequest) -> ChatResult:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            return await self.inner.chat(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class StageBenchResult:
    rows: int
    concurrency: int
    latency_s: float
    ideal_s: float
    #: ceil(rows / concurrency) x latency: the floor when requests take exactly ``latency``.
    waves_floor_s: float
    elapsed_s: list[float]
    best_s: float
    median_s: float
    ratio_to_ideal: float
    errors: int
    max_inflight: int


ClientFactory = Callable[[str, int], AsyncLLMClient]


def default_client(base_url: str, concurrency: int) -> AsyncLLMClient:
    return SemaphoreClient(AiohttpChatClient(base_url, max_connections=concurrency), concurrency)


def make_batch(rows: int) -> DocumentBatch:
    text = "Glaciers carve valleys over thousands of years and leave moraines behind."
    return DocumentBatch.from_records([{"id": i, "text": f"{text} ({i})"} for i in range(rows)])


async def run(
    base_url: str, args: argparse.Namespace, factory: ClientFactory
) -> tuple[list[float], int]:
    client = factory(base_url, args.concurrency)
    stage = SyntheticStage(
        prompt=PROMPT,
        client=client,
        model_name="sim-model",
        generation_config=GenerationConfig(max_tokens=128),
    )
    batch = make_batch(args.rows)
    try:
        await stage.aprocess(make_batch(args.concurrency))  # warm-up: open the pool
        times: list[float] = []
        errors = 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = await stage.aprocess(batch)
            times.append(time.perf_counter() - start)
            errors += sum(1 for r in out.to_records() if r[ERROR_COLUMN] is not None)
    finally:
        await client.aclose()
    return times, errors


def main(argv: list[str] | None = None, client_factory: ClientFactory | None = None) -> None:
    parser = argparse.ArgumentParser(description="SyntheticStage batch benchmark")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="bench-results/stage.json")
    args = parser.parse_args(argv)
    config = SimulatorConfig(latency=LatencyModel(kind="fixed", fixed_s=args.latency))
    with SimulatorProcess(config) as sim:
        times, errors = asyncio.run(run(sim.base_url, args, client_factory or default_client))
        max_inflight = sim.stats().max_inflight
    ideal = args.rows / args.concurrency * args.latency
    best = min(times)
    result = StageBenchResult(
        rows=args.rows,
        concurrency=args.concurrency,
        latency_s=args.latency,
        ideal_s=ideal,
        waves_floor_s=math.ceil(args.rows / args.concurrency) * args.latency,
        elapsed_s=times,
        best_s=best,
        median_s=statistics.median(times),
        ratio_to_ideal=best / ideal,
        errors=errors,
        max_inflight=max_inflight,
    )
    print(
        f"{args.rows} rows, concurrency {args.concurrency}, latency {args.latency * 1000:.0f} ms: "
        f"best {best:.3f} s, median {result.median_s:.3f} s; ideal {ideal:.3f} s "
        f"(floor of whole waves {result.waves_floor_s:.3f} s); "
        f"ratio {result.ratio_to_ideal:.2f}x; errors {errors}; server max_inflight {max_inflight}"
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    from benchmarks._common import run_main

    run_main(main)
