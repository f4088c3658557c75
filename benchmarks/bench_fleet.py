"""fleet: does one worker keep a serving fleet at its knee?

Four simulated replicas (the simulator's serving mode, one process, one port per
replica; ``max_num_seqs`` 256 each) behind one worker with adaptive concurrency on.
In the same run:

1. **Capacity** -- a bare aiohttp client saturates the fleet directly (1.25 x
   ``max_num_seqs`` requests in flight per replica, its loops started staggered;
   prompts built as the worker's, from documents of its own so that neither side
   finds the other's in the prefix cache), and the simulator's generated tokens per
   second over that window are the fleet's capacity. One request at a time before
   that gives the unloaded latency.
2. **The worker** -- reads the documents from an embedded broker, calls the four
   endpoints and writes results back. Over the *settled window* -- from the end of
   the start-up ramp (the last time the sum of the limits stood 1.5x above where it
   spends the run's second half: the ramp's last doubling was withdrawn), at the
   earliest at 30 % of the records, to 90 % of them -- its server-side goodput
   (generated tokens/s) is compared with the capacity, the mean sum of its adaptive
   limits with the knee (``replicas x max_num_seqs``, where the servers start
   queueing), and the p50/p99 of its per-record stage latency (histogram
   differences over the window) with the unloaded latency. The stage latency
   includes the wait for a slot in the worker (``--max-inflight`` records for
   ``limit`` slots). The JSON result keeps each endpoint's limit every 0.5 s
   (``limit_trace``), and the fleet's generated tokens so far with its sequences
   running and waiting, from the replicas' own metrics (``tokens_trace``).
3. **A cross-check** -- each side's tokens/s against the token model's bound for
   the prompt and answer sizes it sent (:func:`model_bound`): a measurement off by
   a burst shows as a figure above 1.

Token model (the simulator counts whitespace words as tokens): a shared system
prompt of ~100 tokens and a template of 16 (prefix-cached after the first request
per replica), documents of ~120 words, answers cut at ``--max-tokens`` 128. A
decode step takes 8 ms + 0.06 ms per running sequence (23 ms at 256: ~11k
tokens/s per replica), prefill 0.02 ms per uncached prompt token.

The worker's adaptive limit reads the replicas' ``vllm:num_requests_waiting``
(``llm.server_metrics: auto``, the default; ``--server-metrics off``: latency alone).
``--max-num-seqs 1000`` is the case where latency alone stops short (vLLM's default on
H100/H200 is 1,024): give it ``--max-concurrency 2048 --max-inflight 8192`` so that
neither bound is the knee.

Goals: goodput >= 0.95 of capacity; the limit within 10 % of the knee.
Run: ``streamsynth bench fleet [--quick] [--records N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import _common as c
from streamsynth.local.broker import EmbeddedBroker, create_topics, free_port
from streamsynth.local.llm_simulator import ServingConfig, SimulatorConfig, SimulatorProcess

GOODPUT_GOAL = 0.95
KNEE_TOLERANCE = 0.10
SYSTEM_PROMPT = (
    "You are an editor for an encyclopedia. Rewrite each passage you are given as clear "
    "and factual prose. Keep every fact, name, number and date exactly as written, and "
    "add nothing that the passage does not say. Prefer short sentences and plain words, "
    "avoid lists and headings, never address the reader, never mention these rules, and "
    "never say that you are rewriting anything. If the passage is very short, answer with "
    "a single paragraph. If it contains several topics, keep them in the order given and "
    "separate them with a blank line. Write in the same language as the passage, in the "
    "neutral register of a reference work."
)


def _messages(doc: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": c.PROMPT.format(document=doc["text"])},
    ]


async def _stats(session: aiohttp.ClientSession, root: str) -> tuple[int, int, int]:
    """The fleet's generated tokens, answers, and prompt tokens prefilled (not cached)."""
    async with session.get(root + "/stats") as resp:
        st = await resp.json()
    return (
        int(st["completion_tokens"]),
        int(st["requests"]),
        st["prompt_tokens"] - st["cached_tokens"],
    )


def _per_request(later: tuple[int, int, int], earlier: tuple[int, int, int]) -> float:
    """Uncached prompt tokens per request between two /stats reads (prefill cost)."""
    requests = later[1] - earlier[1]
    return (later[2] - earlier[2]) / requests if requests else float("nan")


def _answer_tokens(later: tuple[int, int, int], earlier: tuple[int, int, int]) -> float:
    """Generated tokens per request between two /stats reads."""
    requests = later[1] - earlier[1]
    return (later[0] - earlier[0]) / requests if requests else float("nan")


def tokens_per_s(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of the cumulative token count over time.

    Tokens are counted when an answer ends, and with equal answer lengths the
    answers of a batch admitted together end together: the count rises in steps,
    once per cycle (one answer's time). A difference of two reads is off by
    whatever share of a step falls between them (up to one step per window); the
    slope through every read weighs each end by one read only."""
    if len(points) < 2:
        return float("nan")
    tm = statistics.fmean(t for t, _ in points)
    nm = statistics.fmean(n for _, n in points)
    num = sum((t - tm) * (n - nm) for t, n in points)
    den = sum((t - tm) ** 2 for t, _ in points)
    return num / den if den > 0 else float("nan")


def model_bound(serving: ServingConfig, uncached: float, answer_tokens: float) -> float:
    """The most generated tokens/s the token model allows for this prompt and answer
    size: every slot busy, decoding stopped only for prefill. A replica decoding at
    ``D = max_num_seqs / step_s(max_num_seqs)`` tokens/s spends ``D / answer_tokens x
    uncached x prefill_s_per_token`` of each second prefilling, so it makes
    ``D / (1 + D x uncached x prefill_s_per_token / answer_tokens)``. A cross-check
    that neither side is measured wrong: both should come out near 1.0 of it."""
    decode = serving.decode_capacity_tokens_per_s()
    per_s = decode / (1.0 + decode * uncached * serving.prefill_s_per_token / answer_tokens)
    return serving.replicas * per_s


async def measure_capacity(
    urls: list[str], docs: list[dict[str, str]], args: argparse.Namespace, spread_s: float
) -> dict[str, float]:
    """Unloaded latency, then the fleet saturated by a bare client for ``capacity_s``.

    The client's loops start one by one over ``spread_s`` (two answers' time at a
    full batch). Started together, each replica would admit a whole batch in one
    step, and with equal answer lengths that batch would finish in one step, forever
    (a freed slot is refilled at once from the queue, so the phase is kept): the
    fleet's tokens would arrive in one burst per cycle (about 3.7 s), and a window of
    four cycles would count one burst more or less (+-25 %: it read 37,500-38,700
    tokens/s where the model allows about 35,500). Staggered, completions are spread
    over the cycle as the worker's are (within about +-15 % per second).
    """
    root = urls[0].removesuffix("/v1")
    body = {"model": "sim-model", "max_tokens": args.max_tokens, "temperature": 0.5}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str, doc: dict[str, str]) -> float:
            t0 = time.perf_counter()
            payload = {**body, "messages": _messages(doc)}
            async with session.post(url + "/chat/completions", json=payload) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"capacity client got HTTP {resp.status}")
            return time.perf_counter() - t0

        unloaded = [await one(urls[i % len(urls)], docs[i]) for i in range(8)]
        stop = time.monotonic() + spread_s + args.warm_s + args.capacity_s
        counter = itertools.count(8)

        async def loop(url: str, delay: float) -> None:
            await asyncio.sleep(delay)
            while time.monotonic() < stop:
                await one(url, docs[next(counter) % len(docs)])

        depth = int(args.max_num_seqs * 1.25)
        # Replicas interleaved too, so the fleet's completions are spread, not in phase.
        starts = [
            (u, spread_s * (k + i / len(urls)) / depth)
            for k in range(depth)
            for i, u in enumerate(urls)
        ]
        tasks = [asyncio.ensure_future(loop(u, delay)) for u, delay in starts]
        await asyncio.sleep(spread_s + args.warm_s)
        reads: list[tuple[float, tuple[int, int, int]]] = []
        end = time.monotonic() + args.capacity_s
        while time.monotonic() < end:
            reads.append((time.monotonic(), await _stats(session, root)))
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks)
    st0, st1 = reads[0][1], reads[-1][1]
    return {
        "capacity_tokens_per_s": tokens_per_s([(t, st[0]) for t, st in reads]),
        "unloaded_latency_s": statistics.median(unloaded),
        "capacity_uncached_prompt_tokens": _per_request(st1, st0),
        "capacity_answer_tokens": _answer_tokens(st1, st0),
    }


@dataclass
class Sample:
    """One poll of the simulator's counters and the worker's /metrics."""

    t: float
    stats: tuple[int, int, int]  # the simulator's /stats so far (see _stats)
    limits: dict[str, float]  # adaptive limit per endpoint
    inflight: float
    stage: dict[float, float]  # cumulative stage-duration buckets (le -> count)
    queue: dict[float, float]  # cumulative client-side queue-wait buckets
    #: The replicas' own view (their /metrics), summed: sequences running, waiting.
    running: float = 0.0
    waiting: float = 0.0

    @property
    def tokens(self) -> int:
        return self.stats[0]

    @property
    def limit(self) -> float:
        return sum(self.limits.values())


async def _replica_load(session: aiohttp.ClientSession, urls: list[str]) -> tuple[float, float]:
    """Sequences running and waiting, summed over the replicas' vLLM gauges."""
    running = waiting = 0.0
    for url in urls:
        async with session.get(url.removesuffix("/v1") + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("vllm:num_requests_running{"):
                running += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:num_requests_waiting{"):
                waiting += float(line.rsplit(" ", 1)[1])
    return running, waiting


def _scrape(t: float, stats: tuple[int, int, int], text: str) -> Sample:
    sample = Sample(t, stats, {}, 0.0, {}, {})
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "streamsynth_llm_concurrency_limit":
                sample.limits[s.labels["endpoint"]] = s.value
            elif s.name == "streamsynth_llm_inflight_requests":
                sample.inflight += s.value
            elif s.name == "streamsynth_stage_duration_seconds_bucket":
                _add(sample.stage, s.labels["le"], s.value)
            elif s.name == "streamsynth_llm_queue_wait_seconds_bucket":
                _add(sample.queue, s.labels["le"], s.value)
    return sample


def _add(buckets: dict[float, float], le: str, count: float) -> None:
    buckets[float(le)] = buckets.get(float(le), 0.0) + count


def _between(later: dict[float, float], earlier: dict[float, float]) -> dict[float, float]:
    """Histogram buckets of the observations made between two scrapes."""
    return {le: n - earlier.get(le, 0.0) for le, n in later.items()}


def _quantile(buckets: dict[float, float], q: float) -> float:
    """A quantile from cumulative histogram buckets (linear inside a bucket)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1)
        prev_bound, prev_count = bound, count
    return prev_bound


async def run(args: argparse.Namespace) -> dict[str, Any]:
    serving = ServingConfig(replicas=args.replicas, max_num_seqs=args.max_num_seqs)
    docs = c.make_documents(args.records, seed=args.seed, mean_words=args.words)
    with EmbeddedBroker() as broker, SimulatorProcess(SimulatorConfig(serving=serving)) as sim:
        spread_s = 2.0 * args.max_tokens * serving.step_s(args.max_num_seqs)
        # Documents of their own, drawn alike: the worker's, sent first, would be in the
        # replicas' prefix caches when the worker sends them (a quarter of the capacity
        # client's land where the worker's later go), and its prefill would be cheaper.
        own = c.make_documents(
            args.records, seed=args.seed + 1, mean_words=args.words, id_prefix="capacity"
        )
        capacity = await measure_capacity(sim.base_urls, own, args, spread_s)
        boot = broker.bootstrap_servers
        await create_topics(boot, {"docs": args.partitions, "out": args.partitions, "dlq": 1})
        watcher = c.Watcher(boot, "out", "dlq")
        await watcher.start()
        settings = c.worker_settings(
            bootstrap=boot,
            base_url=sim.base_url,
            group="fleet",
            concurrency=args.max_concurrency,
            max_tokens=args.max_tokens,
            system_prompt=SYSTEM_PROMPT,
            metrics_port=free_port(),
            extra_worker={"max_inflight_records": args.max_inflight},
        )
        llm = settings["llm"]
        llm.pop("base_url")
        # One stage: prefix-affinity routing would keep it on its home replica and the one
        # it spills to; the whole fleet is what is measured here.
        llm.update(
            base_urls=sim.base_urls,
            adaptive_concurrency=True,
            min_concurrency=4,
            routing=args.routing,
            server_metrics=args.server_metrics,
        )
        metrics_url = f"http://127.0.0.1:{settings['metrics']['port']}/metrics"
        worker = c.WorkerProcess(settings)
        worker.start()
        samples: list[Sample] = []
        try:
            await c.warm_up(boot, "docs", watcher, partitions=args.partitions, text="warm up")
            t0 = time.time()
            await c.produce(boot, "docs", docs, partitions=args.partitions)
            async with aiohttp.ClientSession() as session:
                root = sim.base_url.removesuffix("/v1")
                while watcher.done < len(docs) and time.time() - t0 < args.max_s:
                    stats = await _stats(session, root)
                    load = await _replica_load(session, sim.base_urls)
                    async with session.get(metrics_url) as resp:
                        samples.append(_scrape(time.time(), stats, await resp.text()))
                    samples[-1].running, samples[-1].waiting = load
                    await asyncio.sleep(0.5)
            complete = watcher.done >= len(docs)
            log = "" if complete else worker.log_tail()
        finally:
            code = worker.stop()
            await watcher.stop()
    return _summarise(args, serving, capacity, samples, watcher, t0, complete, code, log)


def _ramp_end(samples: list[Sample]) -> float | None:
    """After the last sample at which the sum of the limits stood 1.5x above its median
    over the run's second half: the start-up ramp's overshoot (its last doubling,
    withdrawn; later probes are 10 % steps) is over. None if there was none."""
    if len(samples) < 2:
        return None
    settled = statistics.median(s.limit for s in samples[len(samples) // 2 :])
    high = [i for i, s in enumerate(samples) if s.limit > 1.5 * settled]
    if not high or high[-1] + 1 >= len(samples):
        return None
    return samples[high[-1] + 1].t


def _trace_row(sample: Sample, t0: float) -> list[float]:
    """Seconds since the documents were sent, then each endpoint's limit."""
    return [round(sample.t - t0, 1), *(sample.limits[k] for k in sorted(sample.limits))]


def _summarise(
    args: argparse.Namespace,
    serving: ServingConfig,
    capacity: dict[str, float],
    samples: list[Sample],
    watcher: Any,
    t0: float,
    complete: bool,
    code: int | None,
    log: str,
) -> dict[str, Any]:
    knee = serving.replicas * serving.max_num_seqs
    arrivals = sorted(watcher.arrivals)
    n = len(arrivals)
    ramp_end = _ramp_end(samples)
    # The settled window: from the end of the start-up ramp (at the earliest when 30 %
    # of the records are out) until 90 % are, so the tail's drain is left out too.
    lo_t = arrivals[int(0.3 * n)] if n else t0
    if ramp_end is not None:
        lo_t = max(lo_t, ramp_end)
    hi_t = arrivals[max(int(0.9 * n) - 1, 0)] if n else t0
    window = [s for s in samples if lo_t <= s.t <= hi_t]
    goodput = stage_p50 = stage_p99 = queue_p50 = uncached = answer = float("nan")
    if len(window) >= 2:
        first, last = window[0], window[-1]
        goodput = tokens_per_s([(s.t, s.tokens) for s in window])
        uncached = _per_request(last.stats, first.stats)
        answer = _answer_tokens(last.stats, first.stats)
        stage = _between(last.stage, first.stage)
        stage_p50, stage_p99 = _quantile(stage, 0.5), _quantile(stage, 0.99)
        queue_p50 = _quantile(_between(last.queue, first.queue), 0.5)
    limits = [s.limit for s in window] or [float("nan")]
    done = sum(1 for a in arrivals if lo_t <= a <= hi_t)
    unloaded = capacity["unloaded_latency_s"]
    bound = model_bound(serving, uncached, answer)
    capacity_bound = model_bound(
        serving, capacity["capacity_uncached_prompt_tokens"], capacity["capacity_answer_tokens"]
    )
    return {
        "records": args.records,
        "completed": watcher.done,
        "dlq": watcher.dlq,
        "complete": complete,
        "knee": knee,
        "capacity_tokens_per_s": capacity["capacity_tokens_per_s"],
        "goodput_tokens_per_s": goodput,
        "goodput_ratio": goodput / capacity["capacity_tokens_per_s"],
        "ramp_end_s": (ramp_end - t0) if ramp_end is not None else None,
        "window_s": [lo_t - t0, hi_t - t0],
        "limit_mean": statistics.fmean(limits),
        "limit_min": min(limits),
        "limit_max": max(limits),
        "limit_ratio": statistics.fmean(limits) / knee,
        "inflight_mean": statistics.fmean([s.inflight for s in window] or [0.0]),
        # The servers' view of the same window: are all slots busy, is anything queued?
        "running_mean": statistics.fmean([s.running for s in window] or [0.0]),
        "waiting_mean": statistics.fmean([s.waiting for s in window] or [0.0]),
        "records_per_s_window": done / (hi_t - lo_t) if hi_t > lo_t else 0.0,
        "unloaded_latency_s": unloaded,
        "p50_latency_s": stage_p50,
        "p99_latency_s": stage_p99,
        "queue_wait_p50_s": queue_p50,
        "uncached_prompt_tokens": uncached,
        "capacity_uncached_prompt_tokens": capacity["capacity_uncached_prompt_tokens"],
        "model_bound_tokens_per_s": bound,
        "goodput_vs_model_bound": goodput / bound,
        "capacity_vs_model_bound": capacity["capacity_tokens_per_s"] / capacity_bound,
        # The goodput ratio had both sides sent prompts equally cheap to prefill (the
        # cache hits on a document's first block differ with the cache's history).
        "like_for_like_ratio": (goodput / bound)
        / (capacity["capacity_tokens_per_s"] / capacity_bound),
        "elapsed_s": (arrivals[-1] - t0) if arrivals else 0.0,
        "limit_trace": [_trace_row(s, t0) for s in samples],
        "tokens_trace": [[round(s.t - t0, 2), s.tokens, s.running, s.waiting] for s in samples],
        "worker_exit_code": code,
        "worker_log_tail": log,
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    within = abs(r["limit_ratio"] - 1.0) <= KNEE_TOLERANCE
    rows = [
        ["goodput (gen tokens/s)", r["goodput_tokens_per_s"], r["capacity_tokens_per_s"],
         f"{r['goodput_ratio']:.3f}"],
        ["adaptive limit (sum)", r["limit_mean"], r["knee"], f"{r['limit_ratio']:.3f}"],
        ["p50 latency (s)", r["p50_latency_s"], r["unloaded_latency_s"],
         f"{r['p50_latency_s'] / r['unloaded_latency_s']:.2f}"],
        ["p99 latency (s)", r["p99_latency_s"], r["unloaded_latency_s"],
         f"{r['p99_latency_s'] / r['unloaded_latency_s']:.2f}"],
    ]  # fmt: skip
    lo, hi = r["window_s"]
    ramp = "not over" if r["ramp_end_s"] is None else f"ended at {r['ramp_end_s']:.0f} s"
    notes = [
        f"{r['records']} records, {args.replicas} replicas x max_num_seqs {args.max_num_seqs}, "
        f"1 worker (max_concurrency {args.max_concurrency}/endpoint, adaptive, "
        f"server_metrics {args.server_metrics}), "
        f"completed {r['completed']} (DLQ {r['dlq']}) in {r['elapsed_s']:.0f} s.",
        f"Settled window {lo:.0f}-{hi:.0f} s (start-up ramp {ramp}; 30-90 % of the records "
        f"at most): {r['records_per_s_window']:.0f} records/s; limit min "
        f"{r['limit_min']:.0f}, max {r['limit_max']:.0f}; mean in flight "
        f"{r['inflight_mean']:.0f} (the replicas: {r['running_mean']:.0f} running of "
        f"{r['knee']}, {r['waiting_mean']:.1f} waiting); prefilled (uncached) prompt "
        "tokens per request "
        f"{r['uncached_prompt_tokens']:.0f} (capacity client "
        f"{r['capacity_uncached_prompt_tokens']:.0f}).",
        "Token model's bound for these prompts (every slot busy, decode stopped only "
        f"to prefill): the worker at {r['goodput_vs_model_bound']:.3f} of it, the "
        f"capacity client at {r['capacity_vs_model_bound']:.3f} of its own (goodput "
        f"ratio for equal prompts: {r['like_for_like_ratio']:.3f}).",
        "Latency: the worker's stage duration over the window (histogram quantiles; "
        f"it includes the wait for a slot, p50 {r['queue_wait_p50_s']:.2f} s) vs one "
        "request at a time.",
        f"Goals: goodput >= {GOODPUT_GOAL}: "
        + ("MET" if r["goodput_ratio"] >= GOODPUT_GOAL else "NOT MET")
        + f"; limit within {KNEE_TOLERANCE:.0%} of the knee: "
        + ("MET" if within else "NOT MET"),
    ]
    c.print_table(
        "fleet: one worker against a simulated serving fleet",
        ["measure", "worker", "reference", "ratio"],
        rows,
        notes,
    )
    return notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsynth bench fleet", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a CI smoke size (2,000 records)")
    # The ramp takes about a minute (five doublings, the last one withdrawn), so the
    # settled window of 40,000 records (about 150 s) is about a minute long too.
    p.add_argument("--records", type=int, default=40_000)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-concurrency", type=int, default=1024, help="per endpoint")
    p.add_argument("--max-inflight", type=int, default=4096, help="worker records in flight")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--routing", default="least_loaded", help="least_loaded | prefix_affinity")
    p.add_argument(
        "--server-metrics",
        default="auto",
        choices=["auto", "off"],
        help="auto: the limit follows the replicas' vllm:num_requests_waiting; off: latency",
    )
    p.add_argument("--words", type=int, default=120, help="mean words per document")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--capacity-s", type=float, default=20.0)
    p.add_argument("--warm-s", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=600.0, help="give up after this long")
    p.add_argument("--out-dir", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.records, args.capacity_s, args.warm_s = min(args.records, 2_000), 6.0, 5.0
    result = asyncio.run(run(args))
    notes = report(args, result)
    c.save_result("fleet", args, {"notes": notes, **result})
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    c.run_main(main)
