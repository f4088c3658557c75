"""Post-processing rules of the five Nemotron-CC tasks (pure functions, no server)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streamsynth.stages.nemotron_cc.compat import ALL_FIXES, Fix
from streamsynth.stages.nemotron_cc.postprocess import (
    PASSAGE_HEADINGS,
    Dropped,
    at_least,
    clean_knowledge_list,
    is_truncated,
    parse_qa_pairs,
    postprocess_diverse_qa,
    postprocess_extract_knowledge,
    postprocess_knowledge_list,
    postprocess_paraphrase,
    qa_sample_size,
    rejoin_segments,
    remove_lines,
    remove_markdown,
    remove_wrapping_quotes,
    sample_qa_pairs,
    strip_prefix,
)
from streamsynth.stages.nemotron_cc.preprocess import FilterReason
from streamsynth.stages.nemotron_cc.prompts import DIVERSE_QA_PREFIX, WIKIPEDIA_PREFIX


class WordTokenizer:
    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


WORDS = WordTokenizer()
QA_PREFIX = DIVERSE_QA_PREFIX


def prose(n: int) -> str:
    return " ".join(f"word{i}" for i in range(n))


# -- truncation and minimum length ---------------------------------------------------


def test_truncation_by_token_count_is_strictly_over_threshold() -> None:
    assert not is_truncated(prose(598), "stop", WORDS, 598)
    assert is_truncated(prose(599), "stop", WORDS, 598)


def test_finish_reason_length_is_truncation_even_when_short() -> None:
    assert is_truncated("short answer", "length", WORDS, 598)
    assert not is_truncated("short answer", None, WORDS, 598)


def test_at_least_drops_blank_and_short_text() -> None:
    assert at_least("   ", WORDS, None) == Dropped(FilterReason.OUTPUT_TOO_SHORT)
    assert at_least(prose(49), WORDS, 50) == Dropped(FilterReason.OUTPUT_TOO_SHORT)
    assert at_least(prose(50), WORDS, 50) == prose(50)


# -- markdown ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**bold** text", "bold text"),
        ("__bold__ text", "bold text"),
        ("an *italic* word", "an italic word"),
        ("an _underlined_ word", "an underlined word"),
        ("***bold italic***", "bold italic"),
        ("**outer *inner* outer**", "outer inner outer"),
        ("see [the docs](https://example.org/a_b_c)", "see https://example.org/a_b_c"),
        ("![diagram](https://example.org/d.png)", "https://example.org/d.png"),
        ("**see https://example.org/x**", "see https://example.org/x"),
        ("bare https://example.org/_x_ url", "bare https://example.org/_x_ url"),
        ("* a bullet stays", "* a bullet stays"),
        ("2 * 3 * 4 = 24", "2 * 3 * 4 = 24"),
        ("2*3*4", "2*3*4"),
        ("snake_case_name and _private_var", "snake_case_name and _private_var"),
        ("**unclosed bold", "**unclosed bold"),
        ("", ""),
    ],
)
def test_remove_markdown(text: str, expected: str) -> None:
    assert remove_markdown(text) == expected


def test_remove_markdown_works_per_line() -> None:
    # A marker opened on one line is not closed by the next line's marker.
    assert remove_markdown("**a\nb** and *c*\n\n_d_") == "**a\nb** and c\n\nd"


# -- prefix and quotes ---------------------------------------------------------------


def test_strip_prefix_slices_and_strips() -> None:
    assert strip_prefix(f"{WIKIPEDIA_PREFIX}\n\n  Body text. ", WIKIPEDIA_PREFIX) == "Body text."
    assert strip_prefix(f"\n  {WIKIPEDIA_PREFIX} Body", WIKIPEDIA_PREFIX) == "Body"


def test_strip_prefix_missing_or_not_at_start_is_none() -> None:
    assert strip_prefix("Body only.", WIKIPEDIA_PREFIX) is None
    assert strip_prefix(f"Sure! {WIKIPEDIA_PREFIX} Body", WIKIPEDIA_PREFIX) is None
    assert strip_prefix("", WIKIPEDIA_PREFIX) is None


def test_strip_prefix_only_gives_empty_body() -> None:
    assert strip_prefix(WIKIPEDIA_PREFIX, WIKIPEDIA_PREFIX) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"The whole answer."', "The whole answer."),
        ('  " padded "  ', "padded"),
        ("\u201cCurly quotes.\u201d", "Curly quotes."),
        ("\u201cOuter \u201cinner\u201d outer.\u201d", "Outer \u201cinner\u201d outer."),
        ("\u00abGuillemets\u00bb", "Guillemets"),
        ('"A" and "B"', '"A" and "B"'),  # two quotations, not a wrapper
        ('"He said "hi" to me"', '"He said "hi" to me"'),  # ambiguous: left alone
        ("\u201cA\u201d and \u201cB\u201d", "\u201cA\u201d and \u201cB\u201d"),
        ("'single quotes stay'", "'single quotes stay'"),
        ('"First paragraph."\n\n"Second paragraph."', "First paragraph.\n\nSecond paragraph."),
        ('"Quoted line."\nUnquoted line.', '"Quoted line."\nUnquoted line.'),
        ('"unbalanced', '"unbalanced'),
        ('"', '"'),
        ('""', ""),
        ("", ""),
    ],
)
def test_remove_wrapping_quotes(text: str, expected: str) -> None:
    assert remove_wrapping_quotes(text) == expected


# -- line removal and re-join ----------------------------------------------------------


def test_remove_lines_is_exact_per_line() -> None:
    text = (
        "Passage 1:\nFacts here.\n  Passage 2:  \nMore. Passage 3: inline stays\n"
        "Passage 4:\nPassage:"
    )
    assert remove_lines(text, PASSAGE_HEADINGS) == (
        "Facts here.\nMore. Passage 3: inline stays\nPassage 4:"
    )


def test_rejoin_segments_uses_newline() -> None:
    assert rejoin_segments(["a", "b c", "d"]) == "a\nb c\nd"
    assert rejoin_segments([]) == ""


# -- DiverseQA -----------------------------------------------------------------------


def test_parse_qa_pairs_strips_bullets_and_prefix_line() -> None:
    text = f"{QA_PREFIX}\n- Question: Q1?\n- Answer: A1.\n\n- Question: Q2? Answer: A2."
    assert parse_qa_pairs(text, QA_PREFIX) == [
        "Question: Q1?\nAnswer: A1.",
        "Question: Q2? Answer: A2.",
    ]


def test_parse_qa_pairs_prefix_followed_by_a_pair_on_the_same_line() -> None:
    text = f"{QA_PREFIX} - Question: Q1? Answer: A1.\n- Question: Q2? Answer: A2."
    assert parse_qa_pairs(text, QA_PREFIX) == [
        "Question: Q1? Answer: A1.",
        "Question: Q2? Answer: A2.",
    ]
    assert parse_qa_pairs(f"{QA_PREFIX} Some intro.\nQuestion: Q?", QA_PREFIX) == []


def test_parse_qa_pairs_merges_multi_line_answers() -> None:
    text = (
        "Question: Why?\nAnswer: Because\nof two reasons:\n- first\n- second\n"
        "Question: Next?\nAnswer: Yes."
    )
    assert parse_qa_pairs(text, QA_PREFIX) == [
        "Question: Why?\nAnswer: Because\nof two reasons:\nfirst\nsecond",
        "Question: Next?\nAnswer: Yes.",
    ]


def test_parse_qa_pairs_leading_non_question_line_gives_nothing() -> None:
    assert parse_qa_pairs("Sure, here you go:\nQuestion: Q?\nAnswer: A.", QA_PREFIX) == []
    # The prefix only counts as the exact first line.
    assert parse_qa_pairs(f"Intro\n{QA_PREFIX}\nQuestion: Q?", QA_PREFIX) == []


def test_parse_qa_pairs_empty_text() -> None:
    assert parse_qa_pairs("", QA_PREFIX) == []
    assert parse_qa_pairs(f"{QA_PREFIX}\n\n", QA_PREFIX) == []


def test_qa_sample_size_scales_with_segment_length() -> None:
    rng = random.Random(1)
    assert {qa_sample_size(prose(10), WORDS, rng) for _ in range(50)} == {1}  # int(10*10/150)=0
    sizes = {qa_sample_size(prose(150), WORDS, rng) for _ in range(500)}
    assert sizes == set(range(1, 11))


def test_sample_qa_pairs_appends_a_seeded_subset_to_the_segment() -> None:
    pairs = [f"Question: Q{i}?\nAnswer: A{i}." for i in range(8)]
    segment = prose(150)
    first = sample_qa_pairs(segment, pairs, WORDS, random.Random(7))
    assert first == sample_qa_pairs(segment, pairs, WORDS, random.Random(7))
    assert first.startswith(segment + "\n\n")
    chosen = first[len(segment) + 2 :].split("\n\n")
    assert 1 <= len(chosen) <= 8
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(pairs)
    outputs = {sample_qa_pairs(segment, pairs, WORDS, random.Random(seed)) for seed in range(20)}
    assert len(outputs) > 1  # different seeds sample differently


def test_postprocess_diverse_qa_end_to_end() -> None:
    answer = f"**{QA_PREFIX}**\n- **Question:** What is X?\n- **Answer:** X is Y."
    result = postprocess_diverse_qa(
        answer, "stop", prose(100), tokenizer=WORDS, max_tokens=598, prefix=QA_PREFIX,
        rng=random.Random(0), min_tokens=100,
    )  # fmt: skip
    assert result == prose(100) + "\n\nQuestion: What is X?\nAnswer: X is Y."


@pytest.mark.parametrize(
    ("answer", "finish", "reason"),
    [
        ("Question: Q? Answer: A.", "length", FilterReason.TRUNCATED),
        ("Here you go\nQuestion: Q? Answer: A.", "stop", FilterReason.NO_QA_PAIRS),
        ("", "stop", FilterReason.NO_QA_PAIRS),
    ],
)
def test_postprocess_diverse_qa_drops(answer: str, finish: str, reason: FilterReason) -> None:
    result = postprocess_diverse_qa(
        answer, finish, prose(100), tokenizer=WORDS, max_tokens=598, prefix=QA_PREFIX,
        rng=random.Random(0), min_tokens=100,
    )  # fmt: skip
    assert result == Dropped(reason)


def test_postprocess_diverse_qa_min_tokens_counts_segment_and_pairs() -> None:
    short = postprocess_diverse_qa(
        "Question: Q? Answer: A.", "stop", prose(90), tokenizer=WORDS, max_tokens=598,
        prefix=QA_PREFIX, rng=random.Random(0), min_tokens=100,
    )  # fmt: skip
    assert short == Dropped(FilterReason.OUTPUT_TOO_SHORT)  # 90 + 4 words < 100


# -- KnowledgeList -------------------------------------------------------------------


def test_clean_knowledge_list_skips_intro_and_strips_bullets_and_indentation() -> None:
    text = "Here are the facts:\n- Fact one.\n- Fact two:\n  - sub fact\n  continuation\n-no space"
    assert clean_knowledge_list(text) == "Fact one.\nFact two:\n- sub fact\ncontinuation\n-no space"


def test_clean_knowledge_list_keeps_first_line_when_it_is_a_bullet() -> None:
    assert clean_knowledge_list("- First.\n- Second.") == "First.\nSecond."
    assert clean_knowledge_list("\n\n- First.") == "First."  # leading blank lines ignored


def test_clean_knowledge_list_intro_only_and_empty() -> None:
    assert clean_knowledge_list("Just an intro line") == ""
    assert clean_knowledge_list("") == ""


def test_postprocess_knowledge_list_chain() -> None:
    facts = "\n".join(f"- **Fact {i}:** value {i} is {i * 2}." for i in range(12))
    result = postprocess_knowledge_list(
        f"Key facts:\n{facts}", "stop", tokenizer=WORDS, max_tokens=598, min_tokens=50
    )
    assert isinstance(result, str)
    assert result.splitlines()[0] == "Fact 0: value 0 is 0."
    assert len(result.splitlines()) == 12
    assert postprocess_knowledge_list(
        "- one fact", "stop", tokenizer=WORDS, max_tokens=598, min_tokens=50
    ) == Dropped(FilterReason.OUTPUT_TOO_SHORT)


# -- paraphrase and extract chains ---------------------------------------------------


def test_postprocess_paraphrase_chain() -> None:
    answer = f'**{WIKIPEDIA_PREFIX}**\n\n"The *city* has {prose(60)}."'
    result = postprocess_paraphrase(
        answer, "stop", tokenizer=WORDS, max_tokens=510, prefix=WIKIPEDIA_PREFIX, min_tokens=50
    )
    assert result == f"The city has {prose(60)}."


@pytest.mark.parametrize(
    ("answer", "finish", "min_tokens", "reason"),
    [
        (f"{WIKIPEDIA_PREFIX} {prose(60)}", "length", 50, FilterReason.TRUNCATED),
        (f"{WIKIPEDIA_PREFIX} {prose(600)}", "stop", 50, FilterReason.TRUNCATED),
        (prose(60), "stop", 50, FilterReason.MISSING_PREFIX),
        (f"OK. {WIKIPEDIA_PREFIX} {prose(60)}", "stop", 50, FilterReason.MISSING_PREFIX),
        (f"{WIKIPEDIA_PREFIX} {prose(10)}", "stop", 50, FilterReason.OUTPUT_TOO_SHORT),
        (f"{WIKIPEDIA_PREFIX}  ", "stop", None, FilterReason.OUTPUT_TOO_SHORT),
    ],
)
def test_postprocess_paraphrase_drops(
    answer: str, finish: str, min_tokens: int | None, reason: FilterReason
) -> None:
    result = postprocess_paraphrase(
        answer, finish, tokenizer=WORDS, max_tokens=510, prefix=WIKIPEDIA_PREFIX,
        min_tokens=min_tokens,
    )  # fmt: skip
    assert result == Dropped(reason)


def test_postprocess_paraphrase_without_minimum_keeps_short_text() -> None:
    result = postprocess_paraphrase(
        f"{WIKIPEDIA_PREFIX} Short.", "stop", tokenizer=WORDS, max_tokens=510,
        prefix=WIKIPEDIA_PREFIX, min_tokens=None,
    )  # fmt: skip
    assert result == "Short."


def test_postprocess_extract_knowledge_removes_passage_headings() -> None:
    answer = f"**Passage 1:**\n{prose(30)}\n\nPassage 2:\n{prose(30)}"
    result = postprocess_extract_knowledge(
        answer, "stop", tokenizer=WORDS, max_tokens=1398, min_tokens=50
    )
    assert result == f"{prose(30)}\n\n{prose(30)}"
    assert postprocess_extract_knowledge(
        answer, "length", tokenizer=WORDS, max_tokens=1398, min_tokens=50
    ) == Dropped(FilterReason.TRUNCATED)


# -- curator_compat: every README example, both ways ---------------------------------

EXACT: frozenset[Fix] = frozenset()


def test_knowledge_list_strips_each_line_after_the_bullet_in_both_modes() -> None:
    text = "Facts:\n-  spaced item   \n  indented item  "
    assert clean_knowledge_list(text) == "spaced item\nindented item"
    assert clean_knowledge_list(text, fixes=EXACT) == "spaced item\nindented item"


@pytest.mark.parametrize(
    ("call", "fixed", "curator"),
    [
        (lambda f: remove_markdown("snake_case_name, 2*3*4 http://a.org/x_y_z", fixes=f),
         "snake_case_name, 2*3*4 http://a.org/x_y_z", "snakecasename, 234 http://a.org/xyz"),
        (lambda f: remove_markdown("**b** *i* _u_ [t](http://u)", fixes=f), "b i u http://u",
         "b i u http://u"),
        (lambda f: remove_wrapping_quotes('"A." and then "B."', fixes=f),
         '"A." and then "B."', 'A." and then "B.'),
        (lambda f: remove_wrapping_quotes("\u201cA.\u201d", fixes=f), "A.", "\u201cA.\u201d"),
        (lambda f: remove_wrapping_quotes('" x "', fixes=f), "x", " x "),
        (lambda f: strip_prefix(f"\n {WIKIPEDIA_PREFIX} Body", WIKIPEDIA_PREFIX, fixes=f),
         "Body", None),
        (lambda f: remove_lines(" Passage 1: \nText\n", PASSAGE_HEADINGS, fixes=f),
         "Text", " Passage 1: \nText\n"),
        (lambda f: clean_knowledge_list("  - a\n- b", fixes=f), "a\nb", "b"),
        (lambda f: clean_knowledge_list("\n\n- a", fixes=f), "a", "\na"),
        (lambda f: parse_qa_pairs(f"{QA_PREFIX} Question: Q? Answer: A.", QA_PREFIX, fixes=f),
         ["Question: Q? Answer: A."], []),
        (lambda f: is_truncated("short", "length", WORDS, 598, fixes=f), True, False),
        (lambda f: at_least("  ", WORDS, None, fixes=f), Dropped(FilterReason.OUTPUT_TOO_SHORT),
         "  "),
    ],
)  # fmt: skip
def test_fixes_and_curators_rule(call: Any, fixed: Any, curator: Any) -> None:
    assert call(ALL_FIXES) == fixed
    assert call(EXACT) == curator
