"""Counters, gauges and histograms without a lock per update, for the worker's hot path.

prometheus_client guards every value with a ``threading.Lock``: an ``inc()`` costs
about 0.9 us and a histogram ``observe()`` about 2 us on the reference VM (it walks
the buckets and takes two locks). The worker updates three per record and the LLM
client about ten per request, which in ``bench engine`` was about a tenth of the
worker's CPU. Here the same classes keep their values in plain attributes: an update
is 0.15-0.35 us (a histogram finds its bucket by bisection).

The cost of dropping the lock is one assumption: **a metric has one writer thread**,
the thread of the worker's event loop (every update in streamsynth is made there; the
sync engine API runs its stages on one loop thread too). A reader on another thread,
the exposition server, needs no lock: it reads each float as a whole (the GIL), and a
histogram's buckets are read one by one, so a scrape may see an observation in a
bucket and not yet in ``_sum``: one scrape's skew, gone at the next.

They are subclasses: labels, exposition, ``collect()`` and ``registry`` work as for
prometheus_client's own. Exemplars are not kept (streamsynth sets none), and the
multi-process mode does not apply (a worker is one process).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["LoopCounter", "LoopGauge", "LoopHistogram"]


class _Value:
    """A float with one writer: what prometheus_client's ``MutexValue`` is, less the lock."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Any) -> None:
        raise ValueError("streamsynth's lock-free metrics keep no exemplars")

    def get_exemplar(self) -> None:
        return None


class _Parent:
    """Stands for the value of a labelled metric's parent, which has none."""

    @property
    def value(self) -> float:
        raise ValueError("a labelled metric is updated through .labels(...), not itself")

    @value.setter
    def value(self, value: float) -> None:
        raise ValueError("a labelled metric is updated through .labels(...), not itself")


_PARENT: Any = _Parent()


def _no_exemplar(exemplar: object) -> None:
    if exemplar:
        raise ValueError("streamsynth's lock-free metrics keep no exemplars")


class LoopCounter(Counter):
    """A :class:`prometheus_client.Counter` with one writer thread and no lock."""

    _loop_value: _Value = _PARENT  # a child's own value shadows this

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = self._loop_value = _Value()  # type: ignore[assignment]

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        if exemplar:
            _no_exemplar(exemplar)
        self._loop_value.value += amount

    @property
    def value(self) -> float:
        """The count so far, without a scrape (what a benchmark polls: ``collect()`` builds
        every sample of the family, which at 100 polls a second costs the worker ~2 %)."""
        return self._loop_value.value


class LoopGauge(Gauge):
    """A :class:`prometheus_client.Gauge` with one writer thread and no lock."""

    _loop_value: _Value = _PARENT

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = self._loop_value = _Value()  # type: ignore[assignment]

    def inc(self, amount: float = 1) -> None:
        self._loop_value.value += amount

    def dec(self, amount: float = 1) -> None:
        self._loop_value.value -= amount

    def set(self, value: float) -> None:
        self._loop_value.value = float(value)


class LoopHistogram(Histogram):
    """A :class:`prometheus_client.Histogram` with one writer thread and no lock.

    ``observe`` puts ``amount`` in the first bucket whose bound is ``>= amount``, as
    prometheus_client does (its buckets always end with +Inf).
    """

    _loop_sum: _Value = _PARENT

    def _metric_init(self) -> None:
        super()._metric_init()
        self._loop_sum = _Value()
        self._loop_buckets = [_Value() for _ in self._upper_bounds]
        self._sum = self._loop_sum  # type: ignore[assignment]
        self._buckets = self._loop_buckets  # type: ignore[assignment]
        self._bounds = list(self._upper_bounds)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar:
            _no_exemplar(exemplar)
        self._loop_sum.value += amount
        if amount == amount:  # NaN is in no bucket, as with prometheus_client
            self._loop_buckets[bisect_left(self._bounds, amount)].value += 1
