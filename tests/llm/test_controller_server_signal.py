"""The adaptive limit with the server's own queue (``vllm:num_requests_waiting``) as
its knee signal, on a batch-stepped server model in simulated time.

The model (deterministic, no event loop): up to ``slots`` sequences run, the rest
wait; a decode step takes ``base_s + per_seq_s x running`` and every answer has
``tokens`` tokens. A closed-loop client with ``demand`` requests always ready sits
behind the limiter, and once per simulated second the server's running and waiting
counts are handed to the limiter, as the scraper does.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque

from streamsynth.llm.concurrency import AdaptiveLimiter


class BatchServer:
    def __init__(self, slots: int, *, base_s: float = 0.008, per_seq_s: float = 0.00006) -> None:
        self.slots, self.base_s, self.per_seq_s, self.tokens = slots, base_s, per_seq_s, 128
        self.now = self.steps = 0.0
        self.generated = 0
        self.running: list[tuple[float, int, float]] = []  # (finish step, order, sent)
        self.waiting: deque[float] = deque()
        self._order = itertools.count()

    def step_s(self) -> float:
        return self.base_s + self.per_seq_s * len(self.running)

    def capacity_tokens_per_s(self) -> float:
        return self.slots / (self.base_s + self.per_seq_s * self.slots)

    def next_done(self) -> float:
        if not self.running:
            return float("inf")
        return self.now + (self.running[0][0] - self.steps) * self.step_s()

    def advance(self, when: float) -> None:
        if self.running:
            self.steps += (when - self.now) / self.step_s()
        self.now = when

    def pop_done(self) -> float:
        self.steps, _, sent = heapq.heappop(self.running)
        self.generated += self.tokens
        self.admit()
        return sent

    def submit(self) -> None:
        self.waiting.append(self.now)
        self.admit()

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.slots:
            entry = (self.steps + self.tokens, next(self._order), self.waiting.popleft())
            heapq.heappush(self.running, entry)


def drive(
    server: BatchServer,
    end: float,
    *,
    scrape: bool = True,
    demand: int = 8192,
    until: float | None = None,
    limiter: AdaptiveLimiter | None = None,
    **kw: object,
) -> tuple[AdaptiveLimiter, list[tuple[float, int, int]]]:
    """Run until ``end``; samples (time, limit, tokens generated) at each answer."""
    if limiter is None:
        limiter = AdaptiveLimiter("sim", clock=lambda: server.now, **kw)  # type: ignore[arg-type]
    rng = random.Random(3)
    replies: list[tuple[float, int, float]] = []
    order = itertools.count()
    samples: list[tuple[float, int, int]] = []
    next_scrape = server.now + 1.0 if scrape else float("inf")

    def fill() -> None:
        while limiter.inflight < demand and limiter.try_acquire():
            server.submit()

    fill()
    while True:
        reply_at = replies[0][0] if replies else float("inf")
        done_at = server.next_done()
        first = min(reply_at, done_at, next_scrape)
        if first > end:
            server.advance(end)
            return limiter, samples
        server.advance(first)
        if first == next_scrape:
            limiter.on_server_load(len(server.running), len(server.waiting))
            next_scrape += 1.0
        elif first == done_at:
            sent = server.pop_done()
            heapq.heappush(replies, (server.now + rng.expovariate(100.0), next(order), sent))
        else:
            _, _, sent = heapq.heappop(replies)
            limiter.release()
            limiter.on_success(sent)
            samples.append((server.now, limiter.limit, server.generated))
            fill()


def _settled(samples: list[tuple[float, int, int]], start: float) -> tuple[float, float, int, int]:
    """Mean limit, tokens/s, min and max limit from ``start`` on."""
    late = [s for s in samples if s[0] >= start]
    limits = [lim for _, lim, _ in late]
    rate = (late[-1][2] - late[0][2]) / (late[-1][0] - late[0][0])
    return sum(limits) / len(limits), rate, min(limits), max(limits)


def test_settles_at_the_knee_of_a_thousand_slot_server() -> None:
    # Past ~500 sequences latency rises with the batch nearly as fast as the limit
    # (elasticity 0.86-0.90) with no queue at all: the latency law alone stops there.
    server = BatchServer(slots=1000)
    limiter, samples = drive(server, 600.0, max_limit=4096)
    mean, rate, low, high = _settled(samples, 300.0)
    assert 0.9 * 1000 <= mean <= 1.1 * 1000, mean
    assert low >= 850 and high <= 1200, (low, high)
    assert rate >= 0.97 * server.capacity_tokens_per_s(), rate
    assert limiter.state().knee is not None


def test_settles_at_the_knee_of_a_256_slot_server() -> None:
    server = BatchServer(slots=256)
    _, samples = drive(server, 300.0, max_limit=4096)
    mean, rate, low, high = _settled(samples, 150.0)
    assert 0.9 * 256 <= mean <= 1.1 * 256, mean
    assert low >= 0.85 * 256 and high <= 1.2 * 256, (low, high)
    assert rate >= 0.97 * server.capacity_tokens_per_s(), rate


def test_no_waiting_at_the_server_probes_up_past_a_latency_rise() -> None:
    # Every step's time is proportional to the batch: latency grows exactly as the
    # limit does (elasticity 1), which the latency law reads as a queue. The server
    # says nothing waits, so the limit climbs to max_limit.
    def server() -> BatchServer:
        return BatchServer(slots=8192, base_s=0.0005, per_seq_s=0.00002)

    by_latency, _ = drive(server(), 300.0, scrape=False, max_limit=2048)
    by_server, samples = drive(server(), 300.0, max_limit=2048)
    assert by_latency.limit < 1024, by_latency.limit  # the contrast: latency alone stops
    assert by_server.limit == 2048, by_server.limit
    assert all(lim == 2048 for t, lim, _ in samples if t >= 200.0)


def test_requests_waiting_at_the_server_step_the_limit_down() -> None:
    # Settled at 1,000 slots, the server loses 400 of them (KV cache pressure, or
    # another client taking them): requests wait, and the limit follows them down.
    server = BatchServer(slots=1000)
    limiter, _ = drive(server, 300.0, max_limit=4096)
    assert limiter.limit >= 900, limiter.limit
    server.slots = 600
    _, samples = drive(server, 600.0, limiter=limiter)
    mean, rate, low, _ = _settled(samples, 450.0)
    assert 0.9 * 600 <= mean <= 1.1 * 600, mean
    assert low >= 0.8 * 600, low
    assert rate >= 0.95 * server.capacity_tokens_per_s(), rate


def test_stale_gauges_hand_the_decision_back_to_latency() -> None:
    # The gauges stopped (the scraper lost the server): windows decide on latency again.
    server = BatchServer(slots=1000)
    limiter, _ = drive(server, 100.0, max_limit=4096)
    assert limiter.server_signal
    drive(server, 110.0, limiter=limiter, scrape=False)
    assert not limiter.server_signal
