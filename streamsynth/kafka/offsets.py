"""Per-partition offset tracking: commit only the contiguous finished prefix.

Records of one partition finish out of order (a slow LLM request holds back
nothing but itself), but Kafka keeps one committed offset per partition. The
committed offset may therefore never pass a record that is still in flight:
that is how concurrent consumers silently lose data after a crash (faust's
"commit past a slow message" bug). :class:`OffsetTracker` keeps the fetched
offsets in fetch order and the set of finished ones; :meth:`committable` drops
finished offsets from the front and returns the first unfinished one.

Offsets may have gaps (compacted topics, transaction markers), so the tracker
never assumes ``offset + 1`` follows ``offset``: after the last fetched record
finishes it commits ``last + 1``, which is exactly what Kafka expects.

Every operation is O(1) amortized: each offset is appended once, added to the
finished set once and popped once.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Fetched and finished offsets of one partition (one assignment generation)."""

    __slots__ = ("_done", "_last_fetched", "_pending", "committed")

    def __init__(self, committed: int | None = None) -> None:
        #: Fetched offsets not yet dropped from the front, in fetch (= increasing) order.
        self._pending: deque[int] = deque()
        #: Finished offsets still in ``_pending`` (behind an unfinished one).
        self._done: set[int] = set()
        self._last_fetched = -1
        #: The last offset committed (or known committed); commits never go below it.
        self.committed = committed

    def add(self, offset: int) -> bool:
        """Register a fetched offset; False when it is not new (a refetch: skip the record).

        Within a partition Kafka delivers increasing offsets; anything at or below
        the last one fetched was already dispatched in this generation.
        """
        if offset <= self._last_fetched:
            return False
        self._last_fetched = offset
        self._pending.append(offset)
        return True

    def done(self, offset: int) -> None:
        """Mark a fetched offset finished (published, filtered or dead-lettered)."""
        pending = self._pending
        if pending and pending[0] == offset:
            # The common in-order case: drop it at once and whatever finished behind it.
            pending.popleft()
            done = self._done
            while pending and pending[0] in done:
                done.remove(pending.popleft())
        else:
            self._done.add(offset)

    def committable(self) -> int | None:
        """The offset to commit: the first unfinished one, or last fetched + 1.

        None before anything was fetched. Never below :attr:`committed`.
        """
        pending = self._pending
        done = self._done
        while pending and pending[0] in done:
            done.remove(pending.popleft())
        if pending:
            position = pending[0]
        elif self._last_fetched >= 0:
            position = self._last_fetched + 1
        else:
            return None
        if self.committed is not None and position < self.committed:
            return self.committed
        return position

    def to_commit(self) -> int | None:
        """:meth:`committable` when it is ahead of :attr:`committed`, else None."""
        position = self.committable()
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position

    @property
    def unfinished(self) -> int:
        """Fetched records not finished yet."""
        return len(self._pending) - len(self._done)

    @property
    def uncommitted(self) -> int:
        """Fetched records at or past the first unfinished one (finished or not)."""
        return len(self._pending)

    @property
    def last_fetched(self) -> int:
        return self._last_fetched
