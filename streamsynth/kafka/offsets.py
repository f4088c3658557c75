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

**Finished beyond the prefix.** One stuck record would make the next owner redo
everything behind it, so each commit also carries, as its metadata, the finished
offsets past the committed one (:func:`encode_finished`: runs, varint-coded,
base64, under the broker's default 4 KiB ``offset.metadata.max.bytes``; runs that
do not fit are left out, the farthest first, down to the plain prefix). The next
owner reads it (:func:`decode_finished`) and :meth:`OffsetTracker.resume` makes the
tracker treat those offsets as done when they are fetched again, so they are not
processed twice and the prefix still moves over them. The metadata names the
committed offset it belongs to; any other committed offset ignores it (a commit by
a client that writes no or other metadata).
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Sequence

#: Prefix of our commit metadata (the version of the encoding).
METADATA_PREFIX = "ss1:"
#: Kafka's default ``offset.metadata.max.bytes`` is 4096; keep a margin.
MAX_METADATA_CHARS = 4000

#: An inclusive range of finished offsets: (first, last).
Run = tuple[int, int]


class OffsetTracker:
    """Fetched and finished offsets of one partition (one assignment generation)."""

    __slots__ = ("_done", "_last_fetched", "_pending", "_skip", "committed", "committed_metadata")

    def __init__(self, committed: int | None = None) -> None:
        #: Fetched offsets not yet dropped from the front, in fetch (= increasing) order.
        self._pending: deque[int] = deque()
        #: Finished offsets still in ``_pending`` (behind an unfinished one).
        self._done: set[int] = set()
        self._last_fetched = -1
        #: The last offset committed (or known committed); commits never go below it.
        self.committed = committed
        #: The metadata committed with it ("" = none): a commit is due when it changes.
        self.committed_metadata = ""
        #: Runs finished by a previous owner (from the commit metadata), in order.
        self._skip: deque[Run] = deque()

    def resume(self, committed: int, finished: Sequence[Run]) -> None:
        """Start from a committed offset and the runs a previous owner finished beyond it.

        Caller: the worker, on assignment, before anything of the partition is fetched.
        """
        self.committed = committed
        self._skip = deque(run for run in finished if run[1] >= committed)

    def add(self, offset: int) -> bool:
        """Register a fetched offset; False when it is not new (a refetch: skip the record).

        Within a partition Kafka delivers increasing offsets; anything at or below
        the last one fetched was already dispatched in this generation.
        """
        if offset <= self._last_fetched:
            return False
        self._last_fetched = offset
        self._pending.append(offset)
        if self._skip and self._finished_before(offset):
            self.done(offset)  # a previous owner finished it: done, not processed again
            return False
        return True

    def _finished_before(self, offset: int) -> bool:
        skip = self._skip
        while skip and skip[0][1] < offset:
            skip.popleft()  # offsets only grow: runs behind the fetch are spent
        return bool(skip) and skip[0][0] <= offset

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

    def finished_runs(self) -> list[Run]:
        """Finished offsets past the first unfinished one, as inclusive runs.

        Two finished offsets with no unfinished fetched offset between them form one
        run even across a gap: an offset missing between two fetched ones does not
        exist (compaction, transaction markers), so nobody will fetch it.
        """
        self.committable()  # drop the finished front first
        runs: list[Run] = []
        done = self._done
        start = last = -1
        for offset in self._pending:
            if offset in done:
                if start < 0:
                    start = offset
                last = offset
            elif start >= 0:
                runs.append((start, last))
                start = -1
        if start >= 0:
            runs.append((start, last))
        # What a previous owner finished and nobody fetched again yet still counts.
        beyond = self._last_fetched + 1
        for first, end in self._skip:
            if end < beyond:
                continue
            first = max(first, beyond)
            if runs and runs[-1][1] == self._last_fetched and first == beyond:
                runs[-1] = (runs[-1][0], end)  # the fetched run goes on into it
            else:
                runs.append((first, end))
        return runs

    def to_commit_with_metadata(self) -> tuple[int, str] | None:
        """The (offset, metadata) to commit now; None when neither changed.

        A stuck record keeps the offset still while records behind it finish: the
        metadata then changes, and committing it spares the next owner their redo.
        """
        position = self.committable()
        if position is None:
            return None
        metadata = encode_finished(position, self.finished_runs())
        if self.committed is not None and (
            position < self.committed
            or (position == self.committed and metadata == self.committed_metadata)
        ):
            return None
        return position, metadata

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


# -- commit metadata ----------------------------------------------------------------------
def _varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varints(data: bytes) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")
        else:
            values.append(value)
            value = shift = 0
    if shift:
        raise ValueError("truncated varint")
    return values


def encode_finished(
    committed: int, runs: Sequence[Run], max_chars: int = MAX_METADATA_CHARS
) -> str:
    """Commit metadata for ``runs`` finished past ``committed`` ("" when there are none).

    Layout (before base64): varints ``committed``, then per run ``first - cursor`` and
    ``last - first``, where the cursor starts at ``committed`` and moves to
    ``last + 1``. Runs that would pass ``max_chars`` are dropped from the end: the
    nearest ones are redone first, so they are the most worth keeping.
    """
    if not runs:
        return ""
    # base64 turns 3 bytes into 4 characters.
    budget = (max_chars - len(METADATA_PREFIX)) // 4 * 3
    out = bytearray()
    _varint(committed, out)
    cursor = committed
    for first, last in runs:
        if first < cursor or last < first:
            raise ValueError(f"runs must be ordered and past the commit: {(first, last)}")
        size = len(out)
        _varint(first - cursor, out)
        _varint(last - first, out)
        if len(out) > budget:
            del out[size:]
            break
        cursor = last + 1
    if cursor == committed:
        return ""  # not even one run fits: the plain prefix
    return METADATA_PREFIX + base64.urlsafe_b64encode(bytes(out)).decode("ascii")


def decode_finished(committed: int, metadata: str | None) -> list[Run]:
    """The runs in ``metadata`` if it was written with the offset ``committed``; else []."""
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return []
    try:
        values = _read_varints(base64.urlsafe_b64decode(metadata[len(METADATA_PREFIX) :]))
    except (ValueError, binascii.Error):
        return []  # not ours, or damaged: the plain prefix is always safe
    if not values or values[0] != committed or len(values) % 2 != 1:
        return []
    runs: list[Run] = []
    cursor = committed
    for i in range(1, len(values), 2):
        first = cursor + values[i]
        last = first + values[i + 1]
        runs.append((first, last))
        cursor = last + 1
    return runs
