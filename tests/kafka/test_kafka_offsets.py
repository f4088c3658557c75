"""OffsetTracker: never commit past an unfinished record (property tests)."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from streamsynth.kafka.offsets import OffsetTracker

# Increasing offsets with gaps (compacted topics skip offsets).
offsets_strategy = st.lists(st.integers(0, 10_000), min_size=1, max_size=200, unique=True).map(
    sorted
)


def expected_position(fetched: list[int], finished: set[int]) -> int:
    unfinished = [o for o in fetched if o not in finished]
    return min(unfinished) if unfinished else fetched[-1] + 1


@settings(max_examples=300, deadline=None)
@given(offsets=offsets_strategy, data=st.data())
def test_commit_is_first_unfinished_and_monotonic_in_any_order(
    offsets: list[int], data: st.DataObject
) -> None:
    tracker = OffsetTracker()
    fetched: list[int] = []
    finished: set[int] = set()
    last_commit = -1
    remaining = list(offsets)
    while remaining or len(finished) < len(fetched):
        unfinished = [o for o in fetched if o not in finished]
        fetch = bool(remaining) and (not unfinished or data.draw(st.booleans()))
        if fetch:
            offset = remaining.pop(0)
            assert tracker.add(offset)
            fetched.append(offset)
        else:
            offset = data.draw(st.sampled_from(unfinished))
            tracker.done(offset)
            finished.add(offset)
        position = tracker.committable()
        assert position == expected_position(fetched, finished)
        # Never past an unfinished record.
        assert all(position <= o for o in fetched if o not in finished)
        assert position >= last_commit  # monotonic
        if data.draw(st.booleans()):  # commit now and then, as the commit loop does
            to_commit = tracker.to_commit()
            assert to_commit is None or to_commit > last_commit
            if to_commit is not None:
                tracker.committed = to_commit
                last_commit = to_commit
        assert tracker.unfinished == len(fetched) - len(finished)
    # Everything finished: the commit reaches the end.
    assert tracker.committable() == offsets[-1] + 1
    assert tracker.unfinished == 0
    assert tracker.uncommitted == 0


@given(offsets=offsets_strategy, order=st.randoms(use_true_random=False))
def test_all_finished_in_random_order_reaches_the_end(
    offsets: list[int], order: random.Random
) -> None:
    tracker = OffsetTracker()
    for o in offsets:
        tracker.add(o)
    shuffled = list(offsets)
    order.shuffle(shuffled)
    for o in shuffled[:-1]:
        tracker.done(o)
        committable = tracker.committable()
        # The last unfinished holds it back.
        assert committable is not None and committable <= shuffled[-1]
    tracker.done(shuffled[-1])
    assert tracker.committable() == offsets[-1] + 1


def test_nothing_fetched_means_nothing_to_commit() -> None:
    tracker = OffsetTracker()
    assert tracker.committable() is None
    assert tracker.to_commit() is None


def test_refetched_offsets_are_rejected() -> None:
    tracker = OffsetTracker()
    assert tracker.add(5)
    assert not tracker.add(5)
    assert not tracker.add(3)
    assert tracker.add(9)
    tracker.done(9)
    assert tracker.committable() == 5
    tracker.done(5)
    assert tracker.committable() == 10


def test_commit_never_goes_below_what_was_committed() -> None:
    # A new generation may refetch from an older committed offset than we know of.
    tracker = OffsetTracker(committed=100)
    tracker.add(40)
    assert tracker.committable() == 100
    assert tracker.to_commit() is None


def test_hot_path_is_cheap() -> None:
    """O(1) amortized: 200k records, one slow one at the front, well under a second."""
    tracker = OffsetTracker()
    n = 200_000
    start = time.perf_counter()
    for o in range(n):
        tracker.add(o)
    for o in range(1, n):
        tracker.done(o)
        if o % 1000 == 0:
            assert tracker.committable() == 0
    tracker.done(0)
    assert tracker.committable() == n
    assert time.perf_counter() - start < 2.0
