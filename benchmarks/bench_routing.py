"""routing: prefix-affinity vs least-loaded routing over four serving replicas.

One run, two sides, the same workload and a fresh fleet each (cold prefix caches):
the worker's LLM client (``build_llm_client`` from config, ``llm.routing`` the only
difference) sends every document through each of ``--stages`` stages against the
simulator's serving mode (four replicas, one port each, each with its own LRU prefix
cache of ``--cache-blocks`` blocks of 16 tokens).

Each stage has its own long instructions (system prompt + few-shot template, ~1,800
tokens) and a short document (~100 tokens): the shape of Nemotron-CC-style prompts,
where the shared prefix dominates. ``least_loaded`` spreads every stage over every
replica, so each replica's cache must hold all the stages' prefixes (it cannot: they
evict one another, and each miss costs a prefill). ``prefix_affinity`` keeps each
stage on its home replica, so a replica holds about a quarter of them.

Reported per side, measured on the servers (``vllm:prefix_cache_hits_total`` over
``vllm:prefix_cache_queries_total`` from every replica's ``/metrics``) and by the
client: prefix-cache hit rate, goodput (answers per second and generated tokens per
second over the whole run), p50/p99 request latency, and the share of attempts each
replica took.

Goals: affinity hit rate >= 0.9 and affinity goodput higher than least-loaded.
Run: ``streamsynth bench routing [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks import _common as c
from streamsynth.config import LLMSettings
from streamsynth.llm.factory import build_llm_client
from streamsynth.llm.types import ChatRequest, GenerationConfig, Message
from streamsynth.local.llm_simulator import ServingConfig, SimulatorConfig, SimulatorProcess

HIT_RATE_GOAL = 0.9
ROUTINGS = ("prefix_affinity", "least_loaded")
_SERVER_COUNTERS = (
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
    "vllm:generation_tokens_total",
)


def stage_prompts(n: int, words: int, seed: int) -> list[str]:
    """``n`` distinct system prompts of about ``words`` words (instructions + examples)."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        head = f"Task {i}: rewrite the passage below following these rules and examples. "
        prompts.append(head + c.make_text(rng, words))
    return prompts


def _requests(args: argparse.Namespace) -> list[ChatRequest]:
    """Every document through every stage, interleaved as a worker's stages would send."""
    prompts = stage_prompts(args.stages, args.prefix_words, args.seed)
    docs = c.make_documents(args.documents, seed=args.seed + 1, mean_words=args.doc_words)
    config = GenerationConfig(max_tokens=args.max_tokens, temperature=0.5, seed=None)
    requests = []
    for doc in docs:
        for i, system in enumerate(prompts):
            messages: tuple[Message, ...] = (
                {"role": "system", "content": system},
                {"role": "user", "content": f"Passage:\n{doc['text']}"},
            )
            requests.append(
                ChatRequest(model="sim-model", messages=messages, config=config, stage=f"s{i}")
            )
    return requests


def _metrics(url: str) -> dict[str, float]:
    root = url.removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in _SERVER_COUNTERS:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _settings(urls: list[str], routing: str, args: argparse.Namespace) -> LLMSettings:
    return LLMSettings.model_validate(
        {
            "base_urls": urls,
            "model": "sim-model",
            "routing": routing,
            # A fixed bound per replica (its max_num_seqs): both sides get the same slots.
            "max_concurrency": args.max_num_seqs,
            "adaptive_concurrency": False,
            "cache": {"kind": "none"},
            "timeout_s": 120,
            "endpoint_cooldown_s": 0,
        }
    )


async def _drive(urls: list[str], routing: str, args: argparse.Namespace) -> dict[str, Any]:
    client = build_llm_client(_settings(urls, routing, args))
    requests = _requests(args)
    latencies: list[float] = []
    per_endpoint: dict[str, int] = {}
    window = asyncio.Semaphore(args.inflight)

    async def one(request: ChatRequest) -> None:
        async with window:
            result = await client.chat(request)
        latencies.append(result.latency_s)
        per_endpoint[result.endpoint or ""] = per_endpoint.get(result.endpoint or "", 0) + 1

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(r) for r in requests)), args.max_s)
    finally:
        await client.aclose()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "answers": len(latencies),
        "elapsed_s": elapsed,
        "p50_latency_s": statistics.median(latencies),
        "p99_latency_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "shares": [round(per_endpoint.get(u, 0) / len(latencies), 3) for u in urls],
    }


def run_side(routing: str, args: argparse.Namespace) -> dict[str, Any]:
    serving = ServingConfig(
        replicas=args.replicas,
        max_num_seqs=args.max_num_seqs,
        decode_base_s=args.decode_base_s,
        prefill_s_per_token=args.prefill_s_per_token,
        cache_blocks=args.cache_blocks,
    )
    with SimulatorProcess(SimulatorConfig(seed=args.seed, serving=serving)) as sim:
        side = asyncio.run(_drive(sim.base_urls, routing, args))
        totals: dict[str, float] = {}
        for url in sim.base_urls:
            for name, value in _metrics(url).items():
                totals[name] = totals.get(name, 0.0) + value
    queries = totals.get("vllm:prefix_cache_queries_total", 0.0)
    side["hit_rate"] = totals.get("vllm:prefix_cache_hits_total", 0.0) / queries if queries else 0.0
    side["goodput_answers_per_s"] = side["answers"] / side["elapsed_s"]
    side["goodput_tokens_per_s"] = (
        totals.get("vllm:generation_tokens_total", 0.0) / side["elapsed_s"]
    )
    return side


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="streamsynth bench routing", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a small run (CI smoke size)")
    p.add_argument("--documents", type=int, default=120)
    p.add_argument("--stages", type=int, default=16, help="distinct prompt prefixes")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument(
        "--inflight", type=int, default=0, help="client requests in flight (0: 2x slots)"
    )
    p.add_argument("--prefix-words", type=int, default=1800)
    p.add_argument("--doc-words", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--cache-blocks", type=int, default=1200, help="per replica, 16 tokens each")
    p.add_argument("--decode-base-s", type=float, default=0.008)
    p.add_argument("--prefill-s-per-token", type=float, default=0.00002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=600.0, help="give up a side after this")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.documents = min(args.documents, 40)
    if args.inflight <= 0:
        args.inflight = 2 * args.replicas * args.max_num_seqs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sides = {routing: run_side(routing, args) for routing in ROUTINGS}
    aff, ll = sides["prefix_affinity"], sides["least_loaded"]
    goodput_ratio = aff["goodput_answers_per_s"] / ll["goodput_answers_per_s"]
    rows = [
        (
            routing,
            s["hit_rate"],
            s["goodput_answers_per_s"],
            s["goodput_tokens_per_s"],
            s["p50_latency_s"],
            s["p99_latency_s"],
            " ".join(f"{x:.2f}" for x in s["shares"]),
        )
        for routing, s in sides.items()
    ]
    met = aff["hit_rate"] >= HIT_RATE_GOAL and goodput_ratio > 1.0
    c.print_table(
        f"routing: {args.stages} stages x {args.documents} documents over {args.replicas} replicas",
        ["routing", "hit rate", "answers/s", "gen tok/s", "p50 s", "p99 s", "replica shares"],
        rows,
        notes=[
            "hit rate: prompt tokens served from the replicas' prefix caches (vllm:prefix_cache_"
            "hits_total / queries_total, all replicas); goodput over the whole run",
            f"affinity / least-loaded goodput: {goodput_ratio:.2f}x; goal: hit rate >= "
            f"{HIT_RATE_GOAL} and goodput higher -> {'met' if met else 'NOT met'}",
        ],
    )
    c.save_result("routing", args, {"sides": sides, "goodput_ratio": goodput_ratio, "met": met})
    return 0


if __name__ == "__main__":
    c.run_main(main)
