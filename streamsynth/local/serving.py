"""A capacity model of an LLM serving fleet, for the simulator's ``--serving`` mode.

Each replica behaves like one vLLM engine, at the level of detail a client's
throughput and latency depend on:

* **Running slots.** At most ``max_num_seqs`` sequences run at once; the rest wait
  in a queue (FIFO, or by ``priority`` -- lower first -- with
  ``scheduling="priority"``, as ``vllm serve --scheduling-policy priority``). A
  waiting request is never rejected (vLLM queues without bound) unless
  ``max_waiting`` is set, which models a gateway answering 429 in front of it.
* **Prefill.** Admitting requests costs ``prefill_s_per_token`` per *uncached*
  prompt token, during which the replica does not decode (prefill and decode are
  not overlapped: a simplification of chunked prefill).
* **Decode.** Every running sequence gains one token per step, and a step takes
  ``decode_base_s + decode_per_seq_s * running``: a bigger batch makes each request
  slower but the replica faster, up to
  ``max_num_seqs / (decode_base_s + decode_per_seq_s * max_num_seqs)`` tokens/s.
* **Prefix cache.** Prompts are hashed in blocks of ``block_tokens`` tokens, each
  block's hash chained to the one before it, into an LRU of ``cache_blocks``
  blocks per replica. A prompt's leading blocks found in it are *cached tokens*
  (no prefill; reported as ``usage.prompt_tokens_details.cached_tokens``), so a
  shared system prompt and template are prefilled once per replica.

Tokens are whitespace-separated words (the simulator's tokenizer). Cost: one
scheduler task per replica, which advances a virtual decode-step counter to the
next event (a completion, the end of a prefill, an arrival) and sleeps until
then; no timer or sleep per request or per token, so the model is never what
limits a benchmark. Metrics are exposed with vLLM's names
(``vllm:num_requests_running``, ``vllm:prefix_cache_hits_total``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from streamsynth.errors import StreamsynthError

__all__ = ["Replica", "ServingConfig", "ServingResult", "render_metrics"]

#: vLLM's buckets for ``vllm:time_to_first_token_seconds``.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


@dataclass
class ServingConfig:
    """The fleet: ``replicas`` engines, each with this capacity model."""

    replicas: int = 1
    max_num_seqs: int = 256
    decode_base_s: float = 0.008
    decode_per_seq_s: float = 0.00006
    prefill_s_per_token: float = 0.00002
    block_tokens: int = 16
    cache_blocks: int = 65_536
    scheduling: Literal["fcfs", "priority"] = "fcfs"
    #: Waiting requests beyond which new ones get a 429 (a gateway); None: unbounded.
    max_waiting: int | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_num_seqs < 1 or self.block_tokens < 1:
            raise ValueError("replicas, max_num_seqs and block_tokens must be >= 1")
        if min(self.decode_base_s, self.decode_per_seq_s, self.prefill_s_per_token) < 0:
            raise ValueError("step and prefill times must be >= 0")
        if self.decode_base_s + self.decode_per_seq_s <= 0:
            raise ValueError("a decode step must take some time")

    def step_s(self, running: int) -> float:
        return self.decode_base_s + self.decode_per_seq_s * running

    def decode_capacity_tokens_per_s(self) -> float:
        """Generation tokens/s of one replica with every slot busy (prefill excluded)."""
        return self.max_num_seqs / self.step_s(self.max_num_seqs)


@dataclass(frozen=True)
class ServingResult:
    cached_tokens: int
    ttft_s: float


@dataclass
class ReplicaStats:
    prompt_tokens: int = 0
    cache_queries: int = 0
    cache_hits: int = 0
    generation_tokens: int = 0
    finished: int = 0
    ttft_counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    ttft_sum: float = 0.0

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_sum += seconds
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.ttft_counts[i] += 1
                return
        self.ttft_counts[-1] += 1


class QueueFullError(StreamsynthError):
    """The replica's waiting queue is at ``max_waiting``."""

    error_type = "queue_full"
    retryable = True


class PriorityNotEnabledError(StreamsynthError, ValueError):
    """A non-zero priority sent to a replica that schedules first come, first served."""

    error_type = "priority_not_enabled"


class _PrefixCache:
    """LRU over chained block hashes: a prompt's cached prefix, counted in tokens."""

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_blocks
        self._size = block_tokens

    def lookup_insert(self, tokens: Sequence[str]) -> int:
        """Tokens of ``tokens``' longest cached prefix (whole blocks); caches all blocks."""
        size = self._size
        blocks = self._blocks
        chained = 0
        cached = 0
        missed = False
        full = len(tokens) - len(tokens) % size
        for start in range(0, full, size):
            chained = hash((chained, *tokens[start : start + size]))
            if not missed and chained in blocks:
                blocks.move_to_end(chained)
                cached += size
                continue
            missed = True
            blocks[chained] = None
        while len(blocks) > self._capacity:
            blocks.popitem(last=False)
        # The last token is always computed (its logits start the answer), as in vLLM.
        return min(cached, max(len(tokens) - 1, 0))


@dataclass(eq=False)
class _Seq:
    prompt: Sequence[str]
    out_tokens: int
    priority: int
    arrived: float
    future: asyncio.Future[ServingResult]
    cached: int = 0
    finish_step: float = 0.0
    ttft_s: float = 0.0
    aborted: bool = False


class Replica:
    """One engine: a scheduler task stepping its running batch in virtual time."""

    def __init__(self, config: ServingConfig, index: int = 0) -> None:
        self.config = config
        self.index = index
        self.stats = ReplicaStats()
        self._cache = _PrefixCache(config.cache_blocks, config.block_tokens)
        self._order = itertools.count()
        self._running: list[tuple[float, int, _Seq]] = []  # heap by finish step
        self._waiting: list[tuple[int, int, _Seq]] = []  # heap by (priority, arrival)
        self._n_waiting = 0
        self._steps = 0.0  # decode steps done so far (each running sequence +1 token each)
        self._last = 0.0
        self._stall_until = 0.0  # prefill in progress until then: no decoding
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- introspection
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return self._n_waiting

    # -- lifecycle
    def start(self) -> None:
        if self._task is None:
            self._last = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._loop(), name=f"replica-{self.index}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, _, seq in self._running + self._waiting:
            if not seq.future.done():
                seq.future.cancel()

    # -- requests
    async def generate(
        self, prompt: Sequence[str], out_tokens: int, priority: int = 0
    ) -> ServingResult:
        """Queue, prefill and decode one request; returns when its last token is out."""
        cfg = self.config
        if priority and cfg.scheduling != "priority":
            raise PriorityNotEnabledError("priority scheduling is not enabled on this server")
        if cfg.max_waiting is not None and self._n_waiting >= cfg.max_waiting:
            raise QueueFullError(f"{self._n_waiting} requests waiting")
        loop = asyncio.get_running_loop()
        seq = _Seq(prompt, max(1, out_tokens), priority, loop.time(), loop.create_future())
        key = priority if cfg.scheduling == "priority" else 0
        heapq.heappush(self._waiting, (key, next(self._order), seq))
        self._n_waiting += 1
        if len(self._running) < cfg.max_num_seqs:
            # A free slot: admit now, and let the loop re-plan its next wake-up (a full
            # replica needs neither).
            now = loop.time()
            self._advance(now)
            self._admit(now)
            self._wake.set()
        try:
            return await seq.future
        except asyncio.CancelledError:
            self._abort(seq)
            raise

    def _abort(self, seq: _Seq) -> None:
        """The client went away: free its slot (vLLM aborts such requests too)."""
        if seq.aborted:
            return
        seq.aborted = True
        for i, entry in enumerate(self._running):
            if entry[2] is seq:
                self._advance(asyncio.get_running_loop().time())
                self._running[i] = self._running[-1]
                self._running.pop()
                heapq.heapify(self._running)
                self._wake.set()
                return
        self._n_waiting -= 1  # still waiting: skipped when popped

    # -- the scheduler
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._advance(now)
            self._admit(now)
            delay = self._next_event_in(now)
            self._wake.clear()
            if delay is None:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _advance(self, now: float) -> None:
        """Decode from the last event to ``now``, finishing sequences on the way."""
        start = max(self._last, self._stall_until)
        self._last = now
        running = self._running
        while running and start < now:
            step = self.config.step_s(len(running))
            to_next = (running[0][0] - self._steps) * step
            if start + to_next > now:
                self._steps += (now - start) / step
                break
            self._steps = running[0][0]
            start += max(to_next, 0.0)
            self._finish(heapq.heappop(running)[2])
        while running and running[0][0] <= self._steps:  # done exactly at ``now``
            self._finish(heapq.heappop(running)[2])

    def _finish(self, seq: _Seq) -> None:
        stats = self.stats
        stats.generation_tokens += seq.out_tokens
        stats.finished += 1
        stats.observe_ttft(seq.ttft_s)
        if not seq.future.done():
            seq.future.set_result(ServingResult(seq.cached, seq.ttft_s))

    def _admit(self, now: float) -> None:
        cfg = self.config
        admitted: list[_Seq] = []
        prefill = 0
        while self._waiting and len(self._running) + len(admitted) < cfg.max_num_seqs:
            seq = heapq.heappop(self._waiting)[2]
            if seq.aborted:
                continue
            self._n_waiting -= 1
            seq.cached = self._cache.lookup_insert(seq.prompt)
            stats = self.stats
            stats.prompt_tokens += len(seq.prompt)
            stats.cache_queries += len(seq.prompt)
            stats.cache_hits += seq.cached
            prefill += len(seq.prompt) - seq.cached
            admitted.append(seq)
        if not admitted:
            return
        self._stall_until = max(now, self._stall_until) + prefill * cfg.prefill_s_per_token
        batch = len(self._running) + len(admitted)
        first_token_at = self._stall_until + cfg.step_s(batch)
        for seq in admitted:
            # Decoding resumes after the prefill; the step counter stands still until then.
            seq.finish_step = self._steps + seq.out_tokens
            seq.ttft_s = first_token_at - seq.arrived
            heapq.heappush(self._running, (seq.finish_step, next(self._order), seq))

    def _next_event_in(self, now: float) -> float | None:
        """Seconds to the next completion (or the end of a prefill); None when idle."""
        if not self._running:
            return None
        start = max(now, self._stall_until)
        to_next = (self._running[0][0] - self._steps) * self.config.step_s(len(self._running))
        return max(start - now + to_next, 0.0)


def render_metrics(replicas: Sequence[Replica], model: str) -> str:
    """Prometheus text for these replicas, named and labelled as vLLM does."""
    lines: list[str] = []

    def family(name: str, kind: str, doc: str) -> None:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")

    def sample(name: str, replica: Replica, value: float, extra: str = "") -> None:
        labels = f'engine="{replica.index}",model_name="{model}"{extra}'
        lines.append(f"{name}{{{labels}}} {value}")

    gauges = (
        ("vllm:num_requests_running", "Requests in the running batch.", "running"),
        ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", "waiting"),
    )
    for name, doc, attr in gauges:
        family(name, "gauge", doc)
        for r in replicas:
            sample(name, r, getattr(r, attr))
    counters = (
        ("vllm:prefix_cache_queries", "Prompt tokens looked up in the cache.", "cache_queries"),
        ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", "cache_hits"),
        ("vllm:prompt_tokens", "Prompt tokens processed.", "prompt_tokens"),
        ("vllm:generation_tokens", "Generation tokens produced.", "generation_tokens"),
        ("vllm:request_success", "Requests finished.", "finished"),
    )  # fmt: skip
    for name, doc, attr in counters:
        family(name, "counter", doc)
        for r in replicas:
            sample(name + "_total", r, getattr(r.stats, attr))
    name = "vllm:time_to_first_token_seconds"
    family(name, "histogram", "Time to first token.")
    for r in replicas:
        cumulative = 0
        for bound, count in zip(TTFT_BUCKETS, r.stats.ttft_counts, strict=False):
            cumulative += count
            sample(name + "_bucket", r, cumulative, f',le="{bound}"')
        cumulative += r.stats.ttft_counts[-1]
        sample(name + "_bucket", r, cumulative, ',le="+Inf"')
        sample(name + "_count", r, cumulative)
        sample(name + "_sum", r, round(r.stats.ttft_sum, 6))
    return "\n".join(lines) + "\n"
