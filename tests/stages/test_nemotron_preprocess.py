"""Pre-processing: document filter, line split, over-budget drop, greedy join, min filter."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from streamsynth.stages.nemotron_cc.preprocess import (
    JOIN_TOKENS,
    FilterReason,
    Line,
    Preprocessed,
    join_lines,
    preprocess_document,
    split_lines,
)
from streamsynth.stages.nemotron_cc.tokenizer import ApproxTokenizer


class WordTokenizer:
    """One token per whitespace-separated word: makes budgets easy to reason about."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


WORDS = WordTokenizer()


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def pre(
    text: str, *, min_doc: int = 1, max_seg: int = 10, min_seg: int = 1, max_doc: int | None = None
) -> Preprocessed:
    return preprocess_document(
        text,
        WORDS,
        min_document_tokens=min_doc,
        max_segment_tokens=max_seg,
        min_segment_tokens=min_seg,
        max_document_tokens=max_doc,
    )


def test_split_lines_keeps_blank_lines_at_zero_tokens() -> None:
    lines = split_lines("a b\n\nc", WORDS)
    assert lines == [Line("a b", 2), Line("", 0), Line("c", 1)]


def test_join_packs_greedily_counting_one_token_per_join() -> None:
    # 3 + 1 + 3 + 1 + 3 = 11 > 10, so the third line starts a new segment.
    lines = [Line(words(3, "a"), 3), Line(words(3, "b"), 3), Line(words(3, "c"), 3)]
    segments = join_lines(lines, max_tokens=10)
    assert [s.text for s in segments] == [f"{words(3, 'a')}\n{words(3, 'b')}", words(3, "c")]
    assert [s.tokens for s in segments] == [7, 3]
    assert [s.index for s in segments] == [0, 1]


def test_join_exactly_at_budget_stays_one_segment() -> None:
    segments = join_lines([Line("x", 4), Line("y", 5)], max_tokens=10)  # 4 + 1 + 5 = 10
    assert [(s.text, s.tokens) for s in segments] == [("x\ny", 10)]


def test_over_budget_line_is_dropped_not_split_and_neighbours_join() -> None:
    lines = [Line("short1", 2), Line("huge", 11), Line("short2", 2)]
    segments = join_lines(lines, max_tokens=10)
    assert [s.text for s in segments] == ["short1\nshort2"]


def test_empty_and_whitespace_documents_are_too_short() -> None:
    assert pre("").filtered is FilterReason.DOCUMENT_TOO_SHORT
    assert pre("  \n\t\n ").filtered is FilterReason.DOCUMENT_TOO_SHORT
    assert pre("one two", min_doc=3).filtered is FilterReason.DOCUMENT_TOO_SHORT
    assert pre("one two three", min_doc=3).filtered is None


def test_document_max_is_inclusive_and_optional() -> None:
    assert pre(words(5), max_doc=4).filtered is FilterReason.DOCUMENT_TOO_LONG
    assert pre(words(5), max_doc=5).filtered is None
    assert pre(words(500), max_seg=1000).filtered is None  # no max by default


def test_all_lines_over_budget_gives_no_segments() -> None:
    assert pre(f"{words(11)}\n{words(12)}", max_seg=10).filtered is FilterReason.NO_SEGMENTS


def test_segments_under_minimum_are_dropped_and_renumbered() -> None:
    # "short" cannot join "a..." (1 + 1 + 9 > 10), so it is a 1-token segment of its own.
    text = f"short\n{words(9, 'a')}\n{words(9, 'b')}"
    result = pre(text, max_seg=10, min_seg=3)
    assert [s.text for s in result.segments] == [words(9, "a"), words(9, "b")]
    assert [s.index for s in result.segments] == [0, 1]


def test_whitespace_only_segment_is_dropped_even_if_joins_reach_minimum() -> None:
    # A dropped long line leaves blank lines whose joins alone would count 5 tokens.
    text = words(20) + "\n" * 6
    assert pre(text, max_seg=10, min_seg=5).filtered is FilterReason.NO_SEGMENTS


def test_blank_lines_are_kept_inside_segments() -> None:
    result = pre("alpha beta\n\ngamma", max_seg=10)
    assert [s.text for s in result.segments] == ["alpha beta\n\ngamma"]
    assert result.segments[0].tokens == 3 + 2 * JOIN_TOKENS


def test_approx_tokenizer_budget_example() -> None:
    text = "\n".join(["The quick brown fox jumps over the lazy dog."] * 30)
    result = preprocess_document(
        text, ApproxTokenizer(), min_document_tokens=5, max_segment_tokens=50, min_segment_tokens=5
    )
    assert result.filtered is None
    assert all(s.tokens <= 50 for s in result.segments)
    # 10 tokens a line + 1 per join: four lines fit (43), a fifth would not (54).
    assert [s.text.count("\n") + 1 for s in result.segments] == [4] * 7 + [2]


# -- properties ----------------------------------------------------------------------

line_text = st.text(alphabet=st.characters(exclude_characters="\n", codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(line_text, max_size=40), st.integers(min_value=0, max_value=12))
def test_join_never_exceeds_budget_and_keeps_every_in_budget_line_in_order(
    texts: list[str], budget: int
) -> None:
    lines = [Line(t, WORDS.count(t)) for t in texts]
    segments = join_lines(lines, budget)
    assert all(s.tokens <= budget for s in segments)
    # Re-splitting the segments gives exactly the within-budget lines, once each, in order.
    rejoined = [part for s in segments for part in s.text.split("\n")]
    assert rejoined == [line.text for line in lines if line.tokens <= budget]
    # The reported count is the lines' tokens plus one per join.
    for s in segments:
        parts = s.text.split("\n")
        assert s.tokens == sum(WORDS.count(p) for p in parts) + JOIN_TOKENS * (len(parts) - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(line_text, max_size=30), st.integers(min_value=1, max_value=30))
def test_join_is_greedy(texts: list[str], budget: int) -> None:
    lines = [Line(t, WORDS.count(t)) for t in texts if WORDS.count(t) <= budget]
    segments = join_lines(lines, budget)
    # Greedy: the first line of each next segment would not have fitted in the previous one.
    for previous, following in itertools.pairwise(segments):
        first = following.text.split("\n")[0]
        assert previous.tokens + JOIN_TOKENS + WORDS.count(first) > budget


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=1, max_value=40))
def test_preprocess_segments_respect_budget_and_minimum(text: str, budget: int) -> None:
    tokenizer = ApproxTokenizer()
    result = preprocess_document(
        text, tokenizer, min_document_tokens=1, max_segment_tokens=budget, min_segment_tokens=2
    )
    assert (result.filtered is None) == bool(result.segments)
    for index, segment in enumerate(result.segments):
        assert segment.index == index
        assert 2 <= segment.tokens <= budget
        assert segment.text.strip()
        assert set(segment.text.split("\n")) <= set(text.split("\n"))
