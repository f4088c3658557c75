"""The adaptive limit's control law on synthetic servers, in simulated time.

A discrete-event model (no event loop, no sleeps, deterministic): a closed-loop
client with ``demand`` requests always ready, the limiter in front of it, and a
server with ``capacity`` running slots and a FIFO queue behind them. Service time
grows with the running batch (as a batching LLM server's decode step does), so
latency rises before the server queues; a gateway in front may answer 429 at once
when the queue is longer than ``queue_limit``; load-independent noise (429s,
timeouts) is drawn per request from a seeded RNG.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from streamsynth.llm.concurrency import AdaptiveLimiter


@dataclass
class Server:
    capacity: int
    service_s: float = 1.0  # at a full batch; 0.4 of it for a lone request
    queue_limit: int | None = None  # gateway 429s when the queue is longer
    rate_429: float = 0.0
    rate_timeout: float = 0.0
    timeout_s: float = 5.0


@dataclass
class Run:
    """Limit samples (time, limit) and counters of one simulated run."""

    limits: list[tuple[float, int]] = field(default_factory=list)
    ok: int = 0
    overloads: int = 0

    def limits_between(self, start: float, end: float) -> list[int]:
        return [lim for t, lim in self.limits if start <= t < end]


class Simulation:
    def __init__(self, server: Server, *, demand: int, seed: int = 1, **limiter_kw: object) -> None:
        self.now = 0.0
        self.server = server
        self.demand = demand
        self.rng = random.Random(seed)
        self.limiter = AdaptiveLimiter("sim", clock=lambda: self.now, **limiter_kw)  # type: ignore[arg-type]
        self._events: list[tuple[float, int, str, float]] = []
        self._seq = itertools.count()
        self._running = 0
        self._queue: deque[float] = deque()
        self.run = Run()

    def _at(self, when: float, kind: str, started: float) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, started))

    def _send(self) -> None:
        """Fill every free slot of the limiter (the client always has work)."""
        while self.limiter.inflight < self.demand and self.limiter.try_acquire():
            started = self.now
            srv = self.server
            if srv.rate_429 and self.rng.random() < srv.rate_429:
                self._at(self.now + 0.001, "429", started)
            elif srv.rate_timeout and self.rng.random() < srv.rate_timeout:
                self._at(self.now + srv.timeout_s, "timeout", started)
            elif (
                srv.queue_limit is not None
                and len(self._queue) >= srv.queue_limit
                and (self._running >= srv.capacity)
            ):
                self._at(self.now + 0.001, "429", started)
            elif self._running < srv.capacity:
                self._serve(started)
            else:
                self._queue.append(started)

    def _serve(self, started: float) -> None:
        self._running += 1
        batch = self._running / self.server.capacity
        took = self.server.service_s * (0.4 + 0.6 * batch) * self.rng.uniform(0.9, 1.1)
        self._at(self.now + took, "done", started)

    def step_until(self, end: float) -> Run:
        self._send()
        while self._events and self._events[0][0] <= end:
            self.now, _, kind, started = heapq.heappop(self._events)
            if kind == "done":
                self._running -= 1
                while self._queue and self._running < self.server.capacity:
                    self._serve(self._queue.popleft())
                self.limiter.release()
                self.limiter.on_success(started)
                self.run.ok += 1
            else:
                self.limiter.release()
                self.limiter.on_overload(started, retry_after_s=None)
                self.run.overloads += 1
            self.run.limits.append((self.now, self.limiter.limit))
            self._send()
        self.now = end
        return self.run


def test_ramps_up_and_settles_at_the_knee_by_latency_alone() -> None:
    # No error ever: only latency says where the server starts queueing (256).
    sim = Simulation(Server(capacity=256), demand=4096, max_limit=4096)
    run = sim.step_until(240.0)
    late = run.limits_between(120.0, 240.0)
    assert min(late) >= 0.9 * 256, min(late)
    assert max(late) <= 1.25 * 256, max(late)
    avg = sum(late) / len(late)
    assert 0.95 * 256 <= avg <= 1.12 * 256, avg
    assert sim.limiter.state().knee is not None


def test_cuts_once_per_burst_settles_below_the_overload_point_and_recovers() -> None:
    # A gateway rejects at once (429) when more than 32 wait: overload starts at 288.
    server = Server(capacity=256, queue_limit=32)
    sim = Simulation(server, demand=4096, max_limit=4096)
    sim.step_until(60.0)
    # The capacity halves (a replica lost half its GPUs): a burst of 429s.
    server.capacity = 128
    cuts_before, overloads_before = sim.limiter.state().cuts, sim.run.overloads
    sim.step_until(62.0)
    # A burst of 429s (the sim re-sends at once) is a couple of cuts: one per round trip,
    # as many as it takes to get from about 260 below 160 at x0.75 each.
    burst = sim.run.overloads - overloads_before
    cuts = sim.limiter.state().cuts - cuts_before
    assert burst >= 5 and 1 <= cuts <= 3 and cuts < burst / 2, (burst, cuts)
    run = sim.step_until(120.0)
    late = run.limits_between(90.0, 120.0)
    assert max(late) <= 128 + 32 + 16, max(late)  # below where the gateway rejects
    assert min(late) >= 64, min(late)
    # Capacity returns: the limit climbs back (past the old ceiling, slowly).
    server.capacity = 256
    run = sim.step_until(300.0)
    assert max(run.limits_between(240.0, 300.0)) >= 220


def test_load_independent_noise_does_not_pin_the_limit() -> None:
    # 10 % random 429s and 5 % timeouts whose rate does not fall with the limit;
    # the server has spare capacity (1,024 slots for a limit of at most 256).
    server = Server(capacity=1024, rate_429=0.10, rate_timeout=0.05, timeout_s=5.0)
    sim = Simulation(server, demand=4096, max_limit=256, min_limit=4)
    run = sim.step_until(30.0)
    assert max(run.limits_between(0.0, 30.0)) == 256  # the ramp got there
    run = sim.step_until(300.0)
    steady = run.limits_between(30.0, 300.0)
    assert min(steady) > 128, min(steady)
    assert sim.limiter.state().noise_floor > 0.05


def test_real_overload_still_cuts_under_noise() -> None:
    # Noise (5 % 429s) plus a gateway that rejects beyond capacity + 16: a limit of
    # 1,024 must still come down to about the overload point.
    server = Server(capacity=200, queue_limit=16, rate_429=0.05)
    sim = Simulation(server, demand=4096, max_limit=1024, initial_limit=1024)
    run = sim.step_until(300.0)
    late = run.limits_between(200.0, 300.0)
    assert max(late) <= 300, max(late)
    assert min(late) >= 100, min(late)


class BatchStepServer:
    """A serving engine in the manner of ``streamsynth.local.serving``: up to ``slots``
    sequences run, the rest wait (FIFO); every running sequence gains one token per
    decode step, and a step takes ``base_s + per_seq_s * running``. Every answer has
    ``tokens`` tokens, so a batch admitted at once finishes at once (the case where a
    median latency hides a short queue)."""

    def __init__(self, slots: int, tokens: int = 128, base_s: float = 0.008) -> None:
        self.slots, self.tokens, self.base_s, self.per_seq_s = slots, tokens, base_s, 0.00006
        self.now = 0.0
        self.steps = 0.0  # decode steps so far
        self.generated = 0
        self._running: list[tuple[float, int, float]] = []  # (finish step, order, started)
        self._waiting: deque[float] = deque()
        self._order = itertools.count()

    def step_s(self, running: int) -> float:
        return self.base_s + self.per_seq_s * running

    def capacity_tokens_per_s(self) -> float:
        return self.slots / self.step_s(self.slots)

    def next_done(self) -> float:
        if not self._running:
            return float("inf")
        return self.now + (self._running[0][0] - self.steps) * self.step_s(len(self._running))

    def advance(self, when: float) -> None:
        """Decode until ``when`` (no sequence finishes before it)."""
        if self._running:
            self.steps += (when - self.now) / self.step_s(len(self._running))
        self.now = when

    def pop_done(self) -> float:
        """Finish the next sequence (at :meth:`next_done`); returns when it was sent."""
        self.steps, _, started = heapq.heappop(self._running)
        self.generated += self.tokens
        self._admit()
        return started

    def submit(self, started: float) -> None:
        self._waiting.append(started)
        self._admit()

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.slots:
            finish = self.steps + self.tokens
            heapq.heappush(self._running, (finish, next(self._order), self._waiting.popleft()))


def run_batch_server(
    server: BatchStepServer, end: float, *, demand: int, reply_s: float = 0.01, **kw: object
) -> tuple[AdaptiveLimiter, list[tuple[float, int, int]]]:
    """A closed-loop client (``demand`` requests always ready) behind the limiter; each
    answer reaches it after a seeded random delay (the client's own latency). Returns
    the limiter and samples (time, limit, tokens generated so far) at each answer."""
    rng = random.Random(7)
    limiter = AdaptiveLimiter("batch", clock=lambda: server.now, **kw)  # type: ignore[arg-type]
    replies: list[tuple[float, int, float]] = []
    order = itertools.count()
    samples: list[tuple[float, int, int]] = []

    def fill() -> None:
        while limiter.inflight < demand and limiter.try_acquire():
            server.submit(server.now)

    fill()
    while True:
        reply_at = replies[0][0] if replies else float("inf")
        done_at = server.next_done()
        if min(reply_at, done_at) > end:
            return limiter, samples
        if done_at <= reply_at:
            server.advance(done_at)
            started = server.pop_done()
            delay = rng.expovariate(1.0 / reply_s)
            heapq.heappush(replies, (server.now + delay, next(order), started))
            continue
        _, _, started = heapq.heappop(replies)
        server.advance(reply_at)
        limiter.release()
        limiter.on_success(started)
        samples.append((server.now, limiter.limit, server.generated))
        fill()


@pytest.mark.parametrize("slots", [256, 200])
def test_settles_at_the_knee_of_a_batch_stepped_server_with_equal_answers(slots: int) -> None:
    # Latency rises 2.2x (at 256) from one request to a full batch before any queue
    # forms, so only the rise beyond the slots (the queue) may stop the limit. 256 is
    # on the ramp's doubling grid (32 x 8); 200 is not: the ramp's step 128 -> 256
    # straddles it, is accepted, and only a probe downward finds the knee.
    server = BatchStepServer(slots=slots)
    limiter, samples = run_batch_server(server, 400.0, demand=4096, max_limit=4096)
    late = [(t, lim, gen) for t, lim, gen in samples if t >= 200.0]
    limits = [lim for _, lim, _ in late]
    mean = sum(limits) / len(limits)
    assert 0.9 * slots <= mean <= 1.1 * slots, mean  # settled within 10 % of the knee
    assert min(limits) >= 0.85 * slots and max(limits) <= 1.2 * slots, (min(limits), max(limits))
    assert limiter.state().knee is not None
    # And every slot stays busy: the server generates at (nearly) its capacity.
    goodput = (late[-1][2] - late[0][2]) / (late[-1][0] - late[0][0])
    assert goodput >= 0.97 * server.capacity_tokens_per_s(), goodput
