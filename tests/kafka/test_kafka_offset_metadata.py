"""Commit metadata: the finished offsets past the committed one survive a change of owner."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamsynth.kafka.offsets import (
    MAX_METADATA_CHARS,
    METADATA_PREFIX,
    OffsetTracker,
    decode_finished,
    encode_finished,
)

offsets_strategy = st.lists(st.integers(0, 5_000), min_size=1, max_size=300, unique=True).map(
    sorted
)


def expand(runs: list[tuple[int, int]], fetched: list[int]) -> set[int]:
    return {o for o in fetched if any(a <= o <= b for a, b in runs)}


@settings(max_examples=300, deadline=None)
@given(offsets=offsets_strategy, data=st.data())
def test_a_new_owner_skips_exactly_what_the_old_one_finished(
    offsets: list[int], data: st.DataObject
) -> None:
    old = OffsetTracker()
    for o in offsets:
        assert old.add(o)
    finished = set(data.draw(st.sets(st.sampled_from(offsets))))
    for o in sorted(finished, key=lambda _: data.draw(st.integers(0, 1 << 30))):
        old.done(o)
    due = old.to_commit_with_metadata()
    assert due is not None
    position, metadata = due
    assert len(metadata) <= MAX_METADATA_CHARS
    runs = decode_finished(position, metadata)
    # Nothing unfinished is ever called finished; everything finished past the prefix is.
    beyond = [o for o in offsets if o >= position]
    assert expand(runs, beyond) == {o for o in beyond if o in finished}

    new = OffsetTracker()
    new.resume(position, runs)
    processed = [o for o in beyond if new.add(o)]
    assert processed == [o for o in beyond if o not in finished]
    for o in processed:
        new.done(o)
    # Skipped offsets count as done: the prefix passes them.
    assert new.committable() == (offsets[-1] + 1 if beyond else None)


def test_runs_that_do_not_fit_degrade_to_a_shorter_list_then_the_plain_prefix() -> None:
    # Every other offset finished: one run per offset, far too many for 4 KiB.
    runs = [(i, i) for i in range(1, 20_001, 2)]
    metadata = encode_finished(0, runs)
    assert metadata.startswith(METADATA_PREFIX)
    assert len(metadata) <= MAX_METADATA_CHARS
    kept = decode_finished(0, metadata)
    assert 100 < len(kept) < len(runs)
    assert kept == runs[: len(kept)]  # the nearest runs are kept
    assert encode_finished(0, runs, max_chars=len(METADATA_PREFIX) + 3) == ""


def test_metadata_of_another_offset_or_another_writer_is_ignored() -> None:
    metadata = encode_finished(10, [(12, 20)])
    assert decode_finished(10, metadata) == [(12, 20)]
    assert decode_finished(11, metadata) == []  # committed by someone else since
    assert decode_finished(10, "") == []
    assert decode_finished(10, "some other client's note") == []
    assert decode_finished(10, METADATA_PREFIX + "!!not base64!!") == []


def test_a_stuck_record_keeps_the_offset_but_the_metadata_moves_on() -> None:
    t = OffsetTracker()
    for o in range(10):
        t.add(o)
    t.done(0)
    first = t.to_commit_with_metadata()
    assert first == (1, "")
    t.committed, t.committed_metadata = first
    assert t.to_commit_with_metadata() is None  # nothing new
    for o in range(2, 10):
        t.done(o)
    again = t.to_commit_with_metadata()
    assert again is not None and again[0] == 1
    assert decode_finished(1, again[1]) == [(2, 9)]


def test_runs_not_fetched_again_yet_are_carried_into_the_next_commit() -> None:
    t = OffsetTracker()
    t.resume(5, [(7, 100), (200, 300)])
    assert t.add(5)  # the stuck one: processed again
    assert t.add(6)
    assert not t.add(7)  # finished before
    t.done(6)
    due = t.to_commit_with_metadata()
    assert due is not None and due[0] == 5
    assert decode_finished(5, due[1]) == [(6, 100), (200, 300)]
