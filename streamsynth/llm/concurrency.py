"""A concurrency bound per endpoint, shared by every stage and batch of the worker,
and the controller that moves it to the server's knee.

A request holds a slot only while one HTTP attempt is on the wire: the retry loop
acquires a slot per attempt and releases it before sleeping in backoff, so a row
waiting to retry never starves the others.

The control law
---------------
The limit ``L`` is decided once per *window*: a window opens whenever ``L``
changes, and only attempts that *started* inside it count towards it (a request
sent under the old limit says nothing about the new one). Once ``L`` attempts
have started in it (the transient after a change is over), the next
``window_samples(L) = max(32, L)`` starts are its *cohort*, about one round
trip's worth, and the window closes when the whole cohort has reported. From it
the controller reads the cohort's **mean** latency, and from all its attempts
the overload fraction ``f`` (429, 503 and timeouts over finished attempts).

Why the mean of a whole cohort: by Little's law the mean latency at a limit is
the limit over the throughput, so every request that queues in the server raises
it. The median does not see a queue holding fewer than half the requests, and a
batching server with equal answer lengths makes exactly that: a batch admitted
in one step finishes in one step, and of the requests that come back together
only the last few wait for the next batch, while the rest are admitted at once.
(A median-based controller crept up 10 % at a time to 1.5x the knee of ``bench
fleet``'s replicas; replayed on their model, every probe's median was unchanged.)
And the whole cohort, not its first ``n`` outcomes: those are the fast ones, the
queued ones come last.

1. **Start-up ramp** (slow start): ``L`` begins at ``initial_limit`` and doubles
   per window while latency stays flat, up to ``max_limit``.
2. **Knee by latency** (Little's law): when ``L`` rose from ``L0`` to ``L1`` and the
   mean latency from ``m0`` to ``m1``, the elasticity ``e = ln(m1/m0)/ln(L1/L0)``
   tells what the extra slots bought. A batching server gets slower per request as
   its batch grows (``e`` well below 1) but its throughput ``L/m`` still rises;
   once the server *queues*, latency grows in proportion to ``L`` (``e`` near 1)
   and throughput is flat. So ``e >= knee_elasticity`` (0.8), with a rise beyond
   twice the means' standard errors, means "past the knee": ``L`` goes back to
   ``L0`` and holds there for ``hold_windows`` windows. Was ``L0`` itself past
   the knee? A ramp step that straddles the knee (128 -> 256 for a server with
   200 slots) mixes both regimes and may stay under the threshold. So the next
   probe goes one step *down*, to ``L0 / 1.1``: if latency falls in proportion
   (the same test, read downward), the slots above only queued, the lower limit
   stays and the next probe goes down again; if not, ``L`` goes back to ``L0``,
   holds, and the next probe goes up. The limit therefore settles at the knee,
   between one probe step below and one above it (at the knee a probe down costs
   a few per cent of throughput for one window). A probe whose extra slots were
   never filled (the client had no more to send) is withdrawn like a rejected one.
   If latency at an unchanged limit rises by ``latency_tolerance`` (50 %) over
   what it was when that limit was accepted (the server slowed, another client
   arrived), ``L`` is cut by 10 % and re-probed.
   Comparing against a plain "unloaded baseline" would not do: a batching
   server's latency rises long before its queue does (``bench fleet``'s replicas
   answer in 1.0 s alone and 3.6 s with all 256 slots busy, no queue yet); what
   marks the knee is latency rising *in proportion to* the limit. A window in
   which most starts found free slots does not probe upward (no evidence).
3. **Overload signals** (429, 503, timeouts) cut ``L`` by ``decrease_factor``
   (0.75) at once -- **once per burst**: only a failure of an attempt that started
   after the previous cut counts (cascade dampening), and for ``cooldown_s`` (or
   the server's Retry-After, whichever is longer) nothing grows. The limit that
   failed becomes the **ceiling**: recovery probes at most ``ceiling_overshoot``
   (10 %) above it, and the ceiling itself moves up only after ``hold_windows``
   clean windows there.
4. **Load or noise?** A cut is checked: the overload fraction of the window
   after it (at the lower limit) is compared with that of the window before it.
   If the cut left it where it was (within 15 % and within sampling error) and
   below 50 %, the failures do not depend on load (a flaky proxy, random 429s, a
   slow fraction of prompts): the cut is undone, the ceiling dropped, and that
   fraction becomes the *noise floor*. While a noise floor is known, single
   failures no longer cut; a window cuts only when its fraction exceeds
   ``1.5 x floor + 0.02`` plus two standard errors. Windows are judged for errors
   only once they have *matured* (closed for as long as the slowest recent
   attempt took), so late timeouts are counted in the window that sent them.
   The floor follows the measured fraction down (EWMA) and vanishes when
   failures stop.

429s are handed to this controller, not retried blindly: :meth:`ready_at` tells the
retry loop when a throttled attempt may be sent again (the cooldown), and the
re-sent attempt then queues for a slot under the limit that was just cut.

Where the knee test falls short: it needs latency to grow clearly slower than the
limit below the knee. A server whose decode step grows with its batch comes close
to 0.8 without any queue once the batch is large: on ``bench fleet``'s token model
(8 ms + 0.06 ms per sequence per step, prefill stopping decode) the elasticity is
0.71 from 232 to 256 sequences but 0.78 from 256 to 512 and 0.86-0.90 from 512 to
1,000, where throughput still gains 8.6 %. With 1,000 slots per replica the limit
therefore stops near half of them. Telling the last few per cent of throughput from
none takes a server-side signal (``vllm:num_requests_waiting``), not latency.

The server's own queue
----------------------
5. **Requests waiting at the server** (``llm.server_metrics: auto``): where an
   endpoint exports vLLM's gauges on its ``/metrics``, a scraper
   (:mod:`streamsynth.llm.server_metrics`) reads them about once a second and
   hands them to :meth:`AdaptiveLimiter.on_server_load`. A window with at least two
   such reads taken while it was measured (after its transient), the latest no
   older than 5 s, is decided on the server's queue instead of the latency tests of
   rule 2: its mean ``W`` of ``vllm:num_requests_waiting``.

   * ``W`` above 2 % of the limit (and above one request) means the limit is past
     the knee by about ``W`` (the attempts in flight are what the server runs plus
     what it queues): ``L`` goes to ``L - W`` -- at most halving, so that another
     client's queue cannot take the limit to the floor in one window -- and holds
     there for ``hold_windows`` windows. Whether the probe was upward, a ramp step
     or no probe at all (the server lost slots: KV cache pressure, another client).
   * Otherwise nothing waits and a latency rise is the batch growing, not a queue:
     a probe is accepted however much latency rose, the ramp keeps doubling, the
     latency-tolerance cut does not apply, and no probe downward is needed (the
     server said where its knee is).

   Errors (rules 3 and 4) are untouched. Windows with fewer reads (the short
   windows of the ramp's start) and endpoints without the gauges (OpenAI, a NIM
   without metrics, a 404) are decided by latency as above. Since the limit then
   stops where requests start to wait, it holds the server's batch full with a
   queue of at most about 2 % of it, whatever latency does; a server shared with
   other clients pushes it down by their queue as well (at most halving per window).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver

Clock = Callable[[], float]

#: Elasticity of latency w.r.t. the limit at and above which the server is queueing.
KNEE_ELASTICITY = 0.8
#: A window's slots must have been used this much before it may probe upward.
_USED_SHARE = 0.9
#: A cut that leaves the overload fraction within this share of what it was (and
#: within sampling error) did not help: the failures are noise.
_SAME_SHARE = 0.15
#: A fraction this high is overload whatever the cut did (noise is never the norm).
_NOISE_MAX = 0.5
_NOISE_MARGIN = 0.02
_NOISE_GAIN = 1.5
_NOISE_EWMA = 0.2
_NOISE_VANISHED = 0.005
#: Windows kept for late outcomes; beyond this the oldest is judged early.
_MAX_WINDOWS = 64
_SLOWEST_HALF_LIFE_S = 60.0
#: A closed window is judged once this share of its attempts have reported.
_MATURE_SHARE = 0.8
#: The server's gauges decide a window only with this many reads taken inside it...
_SERVER_READS = 2
#: ...and only while the latest read is this recent (else the latency law decides).
_SERVER_STALE_S = 5.0
#: Mean requests waiting at the server above this share of the limit (and above one)
#: mean the limit is past the server's knee.
_SERVER_WAIT_SHARE = 0.02


class Phase(Enum):
    RAMP = "ramp"
    STEADY = "steady"


@dataclass
class _Window:
    """Outcomes of the attempts that started at or after ``opened`` (under one limit)."""

    opened: float
    limit: int
    latencies: list[float] = field(default_factory=list)
    successes: int = 0
    overloads: int = 0
    peak_inflight: int = 0
    #: Starts once settled, and those that found (nearly) every slot taken: the share
    #: says whether the limit was the bound.
    full_starts: int = 0
    settled_starts: int = 0
    #: Attempts started in it; once ``limit`` have, the population in flight is all
    #: new (the transient after a change is over) and latencies are measured.
    started: int = 0
    settled_at: float = math.inf
    #: The measured cohort: the first ``_window_samples(limit)`` attempts started from
    #: ``settled_at`` on; ``cohort_end`` is when the last of them started.
    cohort: int = 0
    cohort_end: float = math.inf
    #: Outcomes of the cohort: the window closes once all of them have reported.
    measured: int = 0
    #: When it stopped taking new attempts; its late outcomes still count until judged.
    closed: float | None = None
    #: The server's own gauges read while it was measured: reads, and the sum of the
    #: requests waiting at the server over them.
    server_reads: int = 0
    server_waiting: float = 0.0

    @property
    def finished(self) -> int:
        return self.successes + self.overloads

    @property
    def overload_share(self) -> float:
        return self.overloads / self.finished if self.finished else 0.0

    def in_cohort(self, started: float) -> bool:
        return self.settled_at <= started <= self.cohort_end

    def latency_stats(self) -> tuple[float | None, float]:
        """The cohort's mean latency (the mean: see the module's docstring) and its
        relative standard error."""
        data = self.latencies
        if not data:
            return None, math.inf
        mean = statistics.fmean(data)
        if len(data) < 4 or mean <= 0:
            return mean, math.inf
        return mean, statistics.stdev(data) / math.sqrt(len(data)) / mean


@dataclass
class _Point:
    """An accepted operating point: the limit and the mean latency measured there."""

    limit: int
    latency: float | None
    spread: float = math.inf  # relative standard error of ``latency``


@dataclass
class _CutCheck:
    """A cut awaiting its verdict: the state to restore if it was noise, and the windows
    before and after it whose overload fractions decide."""

    limit: int
    phase: Phase
    ceiling: int | None
    noise_known: bool
    before: _Window
    after: _Window | None = None


@dataclass(frozen=True)
class ControllerState:
    """What the controller believes, for logs, metrics and tests."""

    limit: int
    phase: str
    ceiling: int | None
    noise_floor: float
    knee: int | None
    cuts: int


#: A queued waiter's states: waiting for a slot, granted one, or gone (cancelled, timed out).
_WAITING: Final = 0
_GRANTED: Final = 1
_GONE: Final = 2


class _Waiter:
    """One queued :meth:`AdaptiveLimiter.acquire`; marked, not removed, when it leaves."""

    __slots__ = ("future", "state")

    def __init__(self, future: asyncio.Future[float]) -> None:
        self.future = future
        self.state = _WAITING


def _compact(heap: list[tuple[Any, int, _Waiter]]) -> None:
    """Drop the entries of waiters no longer waiting from ``heap``, in place."""
    heap[:] = [entry for entry in heap if entry[2].state is _WAITING]
    heapq.heapify(heap)


class _Deadlines:
    """The wait bounds of a queue: a heap by deadline (loop time) and one timer at the
    earliest. Deadlines mostly arrive in order, so a new waiter rarely moves the timer."""

    __slots__ = ("_at", "_expire", "_heap", "_order", "_timer")

    def __init__(self, expire: Callable[[_Waiter], None]) -> None:
        self._expire = expire
        self._heap: list[tuple[float, int, _Waiter]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(
        self, loop: asyncio.AbstractEventLoop, waiter: _Waiter, timeout_s: float, *, live: int
    ) -> None:
        when = loop.time() + max(timeout_s, 0.0)
        heap = self._heap
        if len(heap) > 2 * live + 64:
            _compact(heap)  # granted waiters stay until their deadline: amortized O(1)
        heapq.heappush(heap, (when, next(self._order), waiter))
        if when < self._at:
            self._arm(loop, when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._at = math.inf
        heap = self._heap
        now = loop.time()
        while heap and (heap[0][0] <= now or heap[0][2].state is not _WAITING):
            waiter = heapq.heappop(heap)[2]
            if waiter.state is _WAITING:
                self._expire(waiter)
        if heap:
            self._arm(loop, heap[0][0])


class AdaptiveLimiter:
    """An asyncio semaphore whose size the control law above moves within
    ``[min_limit, max_limit]``.

    Waiters are served lowest priority first, first come first served among equals.
    Not thread-safe: one event loop.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        max_limit: int,
        min_limit: int = 1,
        adaptive: bool = True,
        initial_limit: int | None = None,
        decrease_factor: float = 0.75,
        cooldown_s: float = 2.0,
        probe_step: float = 0.10,
        ceiling_overshoot: float = 0.10,
        hold_windows: int = 3,
        knee_elasticity: float = KNEE_ELASTICITY,
        latency_tolerance: float = 0.5,
        observer: LLMObserver = NULL_OBSERVER,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        if not 0.0 < decrease_factor < 1.0:
            raise ValueError("decrease_factor must be in (0, 1)")
        if probe_step <= 0 or ceiling_overshoot < 0 or hold_windows < 0 or cooldown_s < 0:
            raise ValueError("probe_step > 0; ceiling_overshoot, hold_windows, cooldown_s >= 0")
        self.endpoint = endpoint
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.adaptive = adaptive
        self._factor = decrease_factor
        self._cooldown_s = cooldown_s
        self._probe_step = probe_step
        self._overshoot = ceiling_overshoot
        self._hold_windows = hold_windows
        self._knee_e = knee_elasticity
        self._latency_tol = latency_tolerance
        self._observer = observer
        self._clock = clock
        self._inflight = 0
        # -- priority waiters (helper I, issue #17): a heap by (priority, arrival), so the
        # next free slot goes to the lowest priority value, first come first served within one.
        self._waiters: list[tuple[int, int, _Waiter]] = []
        self._arrivals = itertools.count()
        #: Waiters still waiting; the heap also holds gone ones (``len(_waiters) - _live``)
        #: until they are popped or compacted.
        self._live = 0
        self._deadlines = _Deadlines(self._expire)
        start = max_limit
        if adaptive:
            start = initial_limit if initial_limit is not None else min(max_limit, 32)
        self._limit = max(min_limit, min(max_limit, start))
        self._phase = Phase.RAMP if self._limit < max_limit else Phase.STEADY
        #: Windows by opening time, newest last; closed ones wait here to mature.
        self._windows: deque[_Window] = deque([_Window(opened=clock(), limit=self._limit)])
        self._windows[0].settled_at = self._windows[0].opened
        self._accepted = _Point(self._limit, None)  # the limit we go back to, and its latency
        self._probing_from: _Point | None = None  # set while a probe upward is measured
        #: Set while a probe downward is measured: the point above it, to go back to.
        self._probing_down_from: _Point | None = None
        #: The next probe goes down (an upward one just found the knee).
        self._look_down = False
        self._holds = 0  # windows to wait before the next probe upward
        self._last_decrease = float("-inf")
        self._cooldown_until = float("-inf")
        self._ceiling: int | None = None
        self._ceiling_clean = 0
        #: A cut waiting for its verdict: what to restore if it was noise, and the windows.
        self._cut_check: _CutCheck | None = None
        #: Longest recent attempt (timeouts included), halving per minute: a closed window
        #: is judged that long after it closed, when its late outcomes have arrived.
        self._slowest = 0.0
        self._slowest_at = clock()
        self._noise = 0.0
        self._knee: int | None = None
        self._cuts = 0
        self._server_at = float("-inf")  # when the server's gauges were last read
        observer.on_concurrency_limit(endpoint=endpoint, limit=self._limit)

    # -- introspection --------------------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        return self._live

    def load(self) -> float:
        """Slots in use and queued over the limit (above 1 means a queue); for routing."""
        return (self._inflight + self._live) / self._limit

    def state(self) -> ControllerState:
        return ControllerState(
            limit=self._limit,
            phase=self._phase.value,
            ceiling=self._ceiling,
            noise_floor=self._noise,
            knee=self._knee,
            cuts=self._cuts,
        )

    def ready_at(self) -> float:
        """Clock time before which a throttled (429) attempt should not be re-sent."""
        return self._cooldown_until

    @property
    def server_signal(self) -> bool:
        """Are the server's own gauges being read (recently enough to decide on)?"""
        return self._clock() - self._server_at <= _SERVER_STALE_S

    # -- slots --------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued (the fast path: no await)."""
        return self.try_take() is not None

    def try_take(self) -> float | None:
        """As :meth:`try_acquire`, returning the clock time the slot was taken (pass it
        to :meth:`on_success` / :meth:`on_overload`), or None when none was free."""
        if self._inflight < self._limit and not self._live:
            return self._take()
        return None

    async def acquire(self, priority: int = 0, timeout_s: float | None = None) -> float:
        """Take a slot, queueing if needed; returns the clock time it was granted.

        Queued requests get freed slots lowest ``priority`` first (first come, first
        served among equals). Pass the returned time back to :meth:`on_success` /
        :meth:`on_overload`. ``timeout_s`` bounds the wait (``TimeoutError``). It is
        kept in one timer for the whole queue, not one ``asyncio.timeout`` per waiter:
        at thousands queued, a timer each was the dearest line of a request.
        """
        taken = self.try_take()
        if taken is not None:
            return taken
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        heapq.heappush(self._waiters, (priority, next(self._arrivals), waiter))
        self._live += 1
        if timeout_s is not None:
            self._deadlines.add(loop, waiter, timeout_s, live=self._live)
        queued = self._clock()
        try:
            granted = await waiter.future
        except BaseException:
            if waiter.state is _GRANTED:
                # Granted and cancelled at once: hand the slot on instead of leaking it.
                self.release()
            else:
                self._drop(waiter)
            raise
        self._observer.on_slot_wait(endpoint=self.endpoint, seconds=granted - queued)
        return granted

    def _drop(self, waiter: _Waiter) -> None:
        """``waiter`` leaves the queue (cancelled or timed out): it stays in the heap, marked,
        until popped or compacted, so a storm of timeouts costs no scan per waiter."""
        if waiter.state is not _WAITING:
            return
        waiter.state = _GONE
        self._live -= 1
        gone = len(self._waiters) - self._live
        if gone > 64 and gone > len(self._waiters) // 2:
            _compact(self._waiters)

    def _expire(self, waiter: _Waiter) -> None:
        self._drop(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(TimeoutError())

    def _take(self) -> float:
        """Count a slot taken now; returns now, the attempt's start as the windows saw it.

        The attempt must report that same instant: a cohort is the attempts taken from
        ``settled_at`` to ``cohort_end``, so a start read from the clock again (later,
        or after the waiter's task resumed) would fall outside it, the cohort would
        never be complete, and each window would wait for :meth:`_cohort_lost`.
        """
        now = self._clock()
        self._inflight += 1
        window = self._windows[-1]
        if self._inflight > window.peak_inflight:
            window.peak_inflight = self._inflight
        window.started += 1
        if window.started == window.limit and window.settled_at == math.inf:
            window.settled_at = now
        if window.settled_at != math.inf:
            window.settled_starts += 1
            if self._inflight >= _USED_SHARE * window.limit:
                window.full_starts += 1
            if window.cohort < _window_samples(window.limit):
                window.cohort += 1
                if window.cohort == _window_samples(window.limit):
                    window.cohort_end = now
        self._observer.on_inflight(endpoint=self.endpoint, inflight=self._inflight)
        return now

    def release(self) -> None:
        self._inflight -= 1
        self._observer.on_inflight(endpoint=self.endpoint, inflight=self._inflight)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._inflight < self._limit:
            waiter = heapq.heappop(self._waiters)[2]
            if waiter.state is not _WAITING:
                continue
            self._live -= 1
            if waiter.future.done():  # cancelled, its task not resumed yet: _drop skips it
                waiter.state = _GONE
                continue
            waiter.state = _GRANTED
            # The take time, not when its task resumes.
            waiter.future.set_result(self._take())

    # -- signals ------------------------------------------------------------------------
    def on_success(self, attempt_started: float | None = None) -> None:
        """An attempt succeeded; ``attempt_started`` (from :meth:`acquire`) gives its latency."""
        if not self.adaptive:
            return
        window = self._window_of(attempt_started)
        if window is not None:
            window.successes += 1
            if attempt_started is None:
                window.measured += 1
            else:
                took = self._clock() - attempt_started
                self._note_duration(took)
                if window.in_cohort(attempt_started):
                    window.measured += 1
                    window.latencies.append(took)
        self._after_outcome()

    def on_overload(self, attempt_started: float, *, retry_after_s: float | None = None) -> bool:
        """An attempt started at ``attempt_started`` hit overload; True if the limit fell."""
        if not self.adaptive:
            return False
        now = self._clock()
        self._note_duration(now - attempt_started)
        window = self._window_of(attempt_started)
        if window is not None:
            window.overloads += 1
            if window.in_cohort(attempt_started):
                window.measured += 1
        if retry_after_s is not None and retry_after_s > 0:
            self._cooldown_until = max(self._cooldown_until, now + retry_after_s)
        self._settle_overwhelming()
        # Cascade dampening: a burst from attempts sent before the last cut is one signal.
        # With a noise floor known, or a cut awaiting its verdict, windows decide instead.
        if attempt_started < self._last_decrease or self._noise > 0.0 or self._cut_check:
            self._after_outcome()
            return False
        return self._cut(now)

    def on_server_load(self, running: float, waiting: float) -> None:
        """The server's own view, read now from its metrics: sequences in its running
        batch and requests waiting to be scheduled (vLLM's ``num_requests_*`` gauges).
        Only ``waiting`` decides: the knee is where requests start to wait, however
        many run (fewer than ``max_num_seqs`` when the KV cache is what is full)."""
        del running
        if not self.adaptive:
            return
        now = self._clock()
        self._server_at = now
        window = self._windows[-1]
        if window.settled_at <= now:  # a read in the transient says little of the limit
            window.server_reads += 1
            window.server_waiting += waiting

    def _server_waiting(self, window: _Window) -> float | None:
        """Mean requests waiting at the server while ``window`` was measured; None when
        its gauges cannot decide (not exported, stale, or too few reads in it)."""
        if window.server_reads < _SERVER_READS or not self.server_signal:
            return None
        return window.server_waiting / window.server_reads

    def _settle_overwhelming(self) -> None:
        """Most attempts sent since the last cut failed: it was load and not enough, so
        the verdict need not wait for the window to mature (the next failure cuts)."""
        check = self._cut_check
        after = check.after if check is not None else None
        if after is not None and after.finished >= 8 and after.overload_share > _NOISE_MAX:
            self._cut_check = None

    def _note_duration(self, took: float) -> None:
        # Against the decayed value: an old record must not hide recent slow attempts.
        now = self._clock()
        if took > self._slowest_recent(now):
            self._slowest, self._slowest_at = took, now

    def _slowest_recent(self, now: float) -> float:
        decay: float = 0.5 ** ((now - self._slowest_at) / _SLOWEST_HALF_LIFE_S)
        return self._slowest * decay

    def _window_of(self, started: float | None) -> _Window | None:
        """The window an attempt belongs to (by start time); None if older than all kept."""
        if started is None:
            return self._windows[-1]
        for window in reversed(self._windows):
            if started >= window.opened:
                return window
        return None

    # -- decisions ----------------------------------------------------------------------
    def _after_outcome(self) -> None:
        current = self._windows[-1]
        if current.measured >= _window_samples(current.limit) or self._cohort_lost(current):
            self._close(current)
        self._mature()

    def _cohort_lost(self, window: _Window) -> bool:
        """Some of the cohort will never report (a 400, a cancellation): once it has all
        been out for twice the slowest recent attempt, close with what came back.
        Waiting for the whole cohort is what keeps the mean honest: the outcomes that
        come first are the fast ones."""
        if window.measured < _window_samples(window.limit) // 2:
            return False
        now = self._clock()
        return now - window.cohort_end > 2.0 * self._slowest_recent(now) + 1.0

    def _close(self, window: _Window) -> None:
        """The current window has enough outcomes: decide on latency and errors."""
        now = self._clock()
        if self._above_noise(window):
            # Fast failures (429s) report before slow successes, so a fresh window
            # overstates its fraction: only an overwhelming one cuts before it matures.
            if window.overload_share > _NOISE_MAX and self._may_cut(window):
                self._cut(now)
                return
            self._open_window()  # overloaded: never a reason to probe upward
            return
        if now < self._cooldown_until or self._cut_check is not None:
            self._open_window()  # keep measuring, move nothing while cooling down or judging
            return
        self._decide(window)

    def _above_noise(self, window: _Window) -> bool:
        """More overload signals than the noise floor explains (any, with no floor)."""
        if self._noise <= 0.0:
            return window.overloads > 0
        margin = 2.0 * _sigma(self._noise, window.finished)
        return window.overload_share > self._noise * _NOISE_GAIN + _NOISE_MARGIN + margin

    def _may_cut(self, window: _Window) -> bool:
        """Cascade dampening for window verdicts: one cut per window sent after the last."""
        return self._cut_check is None and window.opened >= self._last_decrease

    def _mature(self) -> None:
        """Judge closed windows whose late outcomes (timeouts) have had time to arrive."""
        now = self._clock()
        windows = self._windows
        wait = self._slowest_recent(now)
        while len(windows) > 1:
            oldest = windows[0]
            if len(windows) <= _MAX_WINDOWS and not _matured(oldest, now, wait):
                break
            windows.popleft()
            self._judge(oldest)

    def _judge(self, window: _Window) -> None:
        share = window.overload_share
        check = self._cut_check
        if check is not None:
            if window is check.before:
                return  # its verdict comes with the window after the cut
            if window is check.after:
                self._cut_check = None
                if _unchanged(check.before, window):
                    self._undo_cut(check, share)
                return
        if self._noise > 0.0:
            if self._above_noise(window):
                # Late outcomes (timeouts) made it overload after all.
                if self._may_cut(window):
                    self._cut(self._clock())
                return
            self._noise = (1 - _NOISE_EWMA) * self._noise + _NOISE_EWMA * share
            if self._noise < _NOISE_VANISHED:
                self._noise = 0.0

    def _undo_cut(self, check: _CutCheck, share: float) -> None:
        """The cut did not reduce the failures: they are noise, not load."""
        before_limit = check.limit
        self._noise = max(self._noise, share)
        # Still ramping unless a knee was found (the ceiling, if any, bounds the ramp).
        self._phase = check.phase if self._knee is not None else Phase.RAMP
        # Ceilings from before any noise was known may come from noise: forget them.
        self._ceiling = check.ceiling if check.noise_known else None
        self._cooldown_until = self._clock()
        self._accepted = _Point(before_limit, None)
        self._holds = 0
        self._set(max(before_limit, self._limit))

    def _cut(self, now: float) -> bool:
        before = self._limit
        undo = _CutCheck(before, self._phase, self._ceiling, self._noise > 0, self._windows[-1])
        new = max(self.min_limit, int(before * self._factor))
        self._last_decrease = now
        self._cooldown_until = max(self._cooldown_until, now + self._cooldown_s)
        self._phase = Phase.STEADY
        self._ceiling = before
        self._ceiling_clean = 0
        self._probing_from = self._probing_down_from = None
        self._look_down = False
        self._accepted = _Point(new, None)
        self._holds = 0
        if new == before:
            return False
        self._cuts += 1
        self._set(new)
        undo.after = self._windows[-1]
        self._cut_check = undo
        return True

    def _decide(self, window: _Window) -> None:
        latency, spread = window.latency_stats()
        above, self._probing_down_from = self._probing_down_from, None
        if above is not None:
            self._judge_down(window, _Point(window.limit, latency, spread), above)
            return
        probe = self._probing_from
        self._probing_from = None
        if probe is not None and not _filled(window):
            # The probe's slots were never filled: no evidence that more helps. Go back.
            self._accepted = probe
            self._holds = self._hold_windows
            self._set(probe.limit)
            return
        waiting = self._server_waiting(window)
        if waiting is not None:
            self._look_down = False  # the server says where its knee is: no need to guess
            if waiting > max(1.0, _SERVER_WAIT_SHARE * window.limit):
                self._server_queued(window.limit, waiting)
                return
        if probe is not None:
            after = _Point(window.limit, latency, spread)
            if waiting is None and _queueing(probe, after, self._knee_e):
                # Past the knee: the extra slots only queued. Go back and hold there.
                self._knee = probe.limit
                self._accepted = probe
                self._phase = Phase.STEADY
                self._holds = self._hold_windows
                self._look_down = True  # and was that limit past the knee already?
                self._set(probe.limit)
                return
            self._accepted = _Point(window.limit, latency)
        elif waiting is None and self._slowed_down(latency, window.limit):
            self._accepted = _Point(max(self.min_limit, int(window.limit * 0.9)), None)
            self._set(self._accepted.limit)
            return
        elif self._accepted.latency is None or self._accepted.limit != window.limit:
            self._accepted = _Point(window.limit, latency)
        if self._holds > 0 or not _filled(window):
            # Holding after a rejected probe, or demand did not fill the slots (no evidence).
            self._holds = max(0, self._holds - 1)
            self._open_window()
            return
        here = _Point(window.limit, latency, spread)
        if self._look_down:
            self._probe_down(here)
        else:
            self._probe_up(here)

    def _server_queued(self, limit: int, waiting: float) -> None:
        """Requests wait at the server: ``limit`` is past its knee by about as many (the
        attempts in flight are the server's running plus waiting). Go to where the queue
        empties -- at most halving, so that other clients' queue cannot take us to the
        floor in one window -- and hold there."""
        target = max(self.min_limit, math.floor(limit - waiting), limit // 2)
        self._knee = target
        self._phase = Phase.STEADY
        self._accepted = _Point(target, None)
        self._holds = self._hold_windows
        self._set(target)

    def _probe_down(self, here: _Point) -> None:
        """Try one step below: a ramp step that straddled the knee was accepted (its
        mean elasticity stayed under the threshold) and left the limit above it."""
        target = max(self.min_limit, math.floor(here.limit / (1.0 + self._probe_step)))
        if target >= here.limit:
            self._look_down = False
            self._open_window()
            return
        self._probing_down_from = here
        self._set(target)

    def _judge_down(self, window: _Window, here: _Point, above: _Point) -> None:
        if _filled(window) and _queueing(here, above, self._knee_e):
            # Latency fell in proportion to the limit: the slots above only queued.
            # Stay here, and look one step further down next.
            self._knee = here.limit
            self._accepted = _Point(here.limit, here.latency)
            self._open_window()
            return
        # Fewer slots cost throughput (or demand fell: no evidence): the limit above
        # was the knee. Go back and hold there; the next probe goes up.
        self._look_down = False
        self._accepted = above
        self._holds = self._hold_windows
        self._set(above.limit)

    def _slowed_down(self, latency: float | None, limit: int) -> bool:
        ref = self._accepted
        if latency is None or ref.latency is None or ref.limit != limit or ref.latency <= 0:
            return False
        return latency > ref.latency * (1.0 + self._latency_tol)

    def _probe_up(self, here: _Point) -> None:
        limit = here.limit
        if self._phase is Phase.RAMP:
            target = limit * 2
        else:
            target = max(limit + 1, math.ceil(limit * (1.0 + self._probe_step)))
        if self._ceiling is not None:
            cap = max(self._ceiling, math.ceil(self._ceiling * (1.0 + self._overshoot)))
            if limit >= cap:
                self._ceiling_clean += 1
                if self._ceiling_clean > self._hold_windows:
                    self._ceiling, self._ceiling_clean = limit, 0  # clean there: lift it
                self._open_window()
                return
            target = min(target, cap)
        target = min(target, self.max_limit)
        if target <= limit:
            self._phase = Phase.STEADY
            self._open_window()
            return
        self._probing_from = here
        self._set(target)

    def _open_window(self, *, settled: bool = True) -> None:
        """Start a window; ``settled`` unless the limit just changed (a transient follows)."""
        now = self._clock()
        windows = self._windows
        windows[-1].closed = now
        fresh = _Window(opened=now, limit=self._limit, peak_inflight=self._inflight)
        if settled:
            fresh.settled_at = now
        windows.append(fresh)

    def _set(self, value: int) -> None:
        value = max(self.min_limit, min(self.max_limit, value))
        changed = value != self._limit
        self._limit = value
        self._open_window(settled=not changed)
        if changed:
            self._observer.on_concurrency_limit(endpoint=self.endpoint, limit=value)
            self._wake()


def _window_samples(limit: int) -> int:
    """A window's cohort: one round trip's worth, at least 32 (a mean of fewer is
    too noisy to compare)."""
    return max(32, limit)


def _matured(window: _Window, now: float, slowest: float) -> bool:
    """Have (nearly) all outcomes of a closed window arrived? Some attempts end without
    a signal (a 400, a cancellation), so "nearly", and at worst after ten times the
    slowest recent attempt."""
    if window.closed is None:
        return False
    if window.finished >= window.started:
        return True
    waited = now - window.closed
    if waited >= 10.0 * slowest + 1.0:
        return True
    return waited >= slowest and window.finished >= _MATURE_SHARE * window.started


def _filled(window: _Window) -> bool:
    """Was the limit the bound: did most starts find (nearly) every slot taken?"""
    if window.settled_starts == 0:
        return window.peak_inflight >= _USED_SHARE * window.limit
    return window.full_starts >= 0.5 * window.settled_starts


def _sigma(share: float, n: int) -> float:
    """Binomial standard error of a fraction measured over ``n`` outcomes."""
    return math.sqrt(max(share * (1.0 - share), 0.0) / max(n, 1))


def _unchanged(before: _Window, after: _Window) -> bool:
    """Is the overload fraction after a cut (at a lower limit) no lower than before it?"""
    s0, s1 = before.overload_share, after.overload_share
    if s1 <= 0.0 or s1 > _NOISE_MAX or before.finished == 0:
        return False
    pooled = (before.overloads + after.overloads) / (before.finished + after.finished)
    error = math.sqrt(pooled * (1 - pooled) * (1 / before.finished + 1 / max(after.finished, 1)))
    return s1 >= s0 - max(_SAME_SHARE * s0, 2.0 * error)


def _queueing(before: _Point, after: _Point, knee_e: float) -> bool:
    """Did latency grow (nearly) in proportion to the limit, by more than the means'
    sampling error? Then the server queues."""
    m0, m1 = before.latency, after.latency
    if m0 is None or m1 is None or m0 <= 0 or after.limit <= before.limit:
        return False
    rise = math.log(max(m1, 1e-9) / m0)
    if rise <= 2.0 * (before.spread + after.spread):
        return False  # within noise: no evidence of a queue
    return rise / math.log(after.limit / before.limit) >= knee_e
