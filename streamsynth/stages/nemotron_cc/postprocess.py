"""Nemotron-CC post-processing: pure functions from an LLM answer to kept text or a drop.

Each task's chain (``postprocess_*``) returns the text to keep or a :class:`Dropped`
with a :class:`FilterReason`. The steps follow NeMo Curator's Nemotron-CC
post-processing pipelines; where NeMo's rule is a heuristic for something we know
(``finish_reason == "length"`` is truncation for certain), we use both.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from streamsynth.stages.nemotron_cc.preprocess import LINE_SEPARATOR, FilterReason
from streamsynth.stages.nemotron_cc.tokenizer import Tokenizer

#: Exact lines ExtractKnowledge answers use as headings; they are not content.
PASSAGE_HEADINGS: tuple[str, ...] = ("Passage:", "Passage 1:", "Passage 2:", "Passage 3:")
QUESTION_MARKER = "Question:"
#: Separator between the segment and its QA pairs, and between pairs.
QA_SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class Dropped:
    """A post-processing chain rejected the answer."""

    reason: FilterReason


PostResult = str | Dropped


# -- generic steps -------------------------------------------------------------------


def is_truncated(
    text: str, finish_reason: str | None, tokenizer: Tokenizer, max_tokens: int
) -> bool:
    """True when the answer hit its length cap: the server said so, or it is over ``max_tokens``.

    ``max_tokens`` is the output budget minus 2 (NeMo's margin for counting drift).
    """
    return finish_reason == "length" or tokenizer.count(text) > max_tokens


def at_least(text: str, tokenizer: Tokenizer, min_tokens: int | None) -> PostResult:
    """``text`` if it is non-blank and has ``min_tokens`` tokens (None: any non-blank text)."""
    if not text.strip():
        return Dropped(FilterReason.OUTPUT_TOO_SHORT)
    if min_tokens is not None and tokenizer.count(text) < min_tokens:
        return Dropped(FilterReason.OUTPUT_TOO_SHORT)
    return text


_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*(\S+?)\s*\)")
# A URL stops at "*" so that "**see https://x.org**" still loses its markers.
_URL = re.compile(r"\b(?:https?|ftp)://[^\s*]+|\bwww\.[^\s*]+")
# Emphasis needs non-space just inside its markers, so bullets ("* item") and spaced
# arithmetic ("2 * 3") are left alone; single markers glued to a word ("snake_case_name",
# "2*3*4") are not emphasis either (CommonMark forbids intra-word "_"; "**" is unambiguous).
_BOLD_STAR = re.compile(r"(?<!\*)\*\*(?=\S)(.+?)(?<=\S)\*\*(?!\*)")
_BOLD_UNDER = re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_ITALIC_UNDER = re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)")
_EMPHASIS = (_BOLD_STAR, _BOLD_UNDER, _ITALIC_STAR, _ITALIC_UNDER)
# Private-use code points stand in for URLs while emphasis is removed.
_SLOT = re.compile("\ue000(\\d+)\ue001")


def remove_markdown(text: str) -> str:
    """Drop bold/italic/underline markers and turn ``[text](url)`` into ``url``, line by line.

    URLs are protected while markers are removed, so "a_b_c" in a link survives.
    """
    return LINE_SEPARATOR.join(_remove_markdown_line(line) for line in text.split(LINE_SEPARATOR))


def _remove_markdown_line(line: str) -> str:
    urls: list[str] = []

    def hide(url: str) -> str:
        urls.append(url)
        return f"\ue000{len(urls) - 1}\ue001"

    line = _LINK.sub(lambda m: hide(m.group(2)), line)
    line = _URL.sub(lambda m: hide(m.group(0)), line)
    # Bold before italic: "***x***" loses "**" then "*"; nested "**a *b* c**" unwraps fully.
    for pattern in _EMPHASIS:
        line = pattern.sub(r"\1", line)
    return _SLOT.sub(lambda m: urls[int(m.group(1))], line)


def strip_prefix(text: str, prefix: str) -> str | None:
    """The answer after its required ``prefix``, stripped; None if it does not start with it.

    Leading whitespace is ignored (models often open with a newline); a prefix found
    later in the answer does not count: the model did not follow the format.
    """
    stripped = text.lstrip()
    if not stripped.startswith(prefix):
        return None
    return stripped[len(prefix) :].strip()


_QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb", "\u300c": "\u300d"}


def remove_wrapping_quotes(text: str) -> str:
    """Remove quotes the model wrapped around its whole answer (or around every line of it).

    Rules: the first and last characters must be a matching pair (straight or curly
    double quotes, guillemets, corner brackets) and the opening quote must close at the
    very end, so ``"A" and "B"`` keeps its quotes. Curly pairs are matched by nesting;
    straight quotes cannot nest, so the first straight quote after the opening one must
    be the last character. Single quotes are never touched (apostrophes). If the whole
    text is not wrapped but every non-blank line is, each line is unwrapped.
    """
    stripped = text.strip()
    if _is_wrapped(stripped):
        return stripped[1:-1].strip()
    lines = stripped.split(LINE_SEPARATOR)
    if len(lines) > 1 and all(_is_wrapped(line.strip()) for line in lines if line.strip()):
        return LINE_SEPARATOR.join(line.strip()[1:-1].strip() for line in lines).strip()
    return stripped


def _is_wrapped(text: str) -> bool:
    if len(text) < 2 or text[0] not in _QUOTE_PAIRS:
        return False
    opening, closing = text[0], _QUOTE_PAIRS[text[0]]
    if text[-1] != closing:
        return False
    if opening == closing:
        return text.find(closing, 1) == len(text) - 1
    depth = 0
    for index, char in enumerate(text):
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return index == len(text) - 1
    return False


def remove_lines(text: str, exact: Collection[str]) -> str:
    """Drop the lines whose stripped content equals one of ``exact``."""
    kept = (line for line in text.split(LINE_SEPARATOR) if line.strip() not in exact)
    return LINE_SEPARATOR.join(kept).strip()


def rejoin_segments(texts: Iterable[str]) -> str:
    """The document-level text of segment outputs, in segment order."""
    return LINE_SEPARATOR.join(texts)


# -- DiverseQA -----------------------------------------------------------------------


def parse_qa_pairs(text: str, prefix: str | None) -> list[str]:
    """The "Question: ... Answer: ..." pairs of a DiverseQA answer, in order.

    Non-blank lines are stripped and lose a leading "- "; ``prefix`` is removed from
    the start of the first line (the line is dropped if nothing else is on it, as when
    the model puts the first pair on the next line). Each "Question:" line starts a
    pair that takes the lines after it (multi-line answers). A non-question line before
    the first question means the format was not followed: no pairs.
    """
    lines = [_unbullet(line) for line in text.split(LINE_SEPARATOR) if line.strip()]
    if lines and prefix is not None and lines[0].startswith(prefix):
        rest = _unbullet(lines[0][len(prefix) :])
        lines = [rest, *lines[1:]] if rest else lines[1:]
    pairs: list[list[str]] = []
    for line in lines:
        if line.startswith(QUESTION_MARKER):
            pairs.append([line])
        elif not pairs:
            return []
        else:
            pairs[-1].append(line)
    return [LINE_SEPARATOR.join(pair) for pair in pairs]


def _unbullet(line: str) -> str:
    line = line.strip()
    return line[2:].lstrip() if line.startswith("- ") else line


def qa_sample_size(segment: str, tokenizer: Tokenizer, rng: random.Random) -> int:
    """How many pairs to keep: uniform in 1..max(1, int(10 x tokens / 150)), ~1 per 15 tokens."""
    return rng.randint(1, max(1, int(10 * tokenizer.count(segment) / 150)))


def sample_qa_pairs(
    segment: str, pairs: Sequence[str], tokenizer: Tokenizer, rng: random.Random
) -> str:
    """The segment followed by a random subset of its QA pairs, in random order."""
    chosen = list(pairs)
    rng.shuffle(chosen)
    keep = qa_sample_size(segment, tokenizer, rng)
    return segment + QA_SEPARATOR + QA_SEPARATOR.join(chosen[:keep])


# -- KnowledgeList -------------------------------------------------------------------


def clean_knowledge_list(text: str) -> str:
    """Bullet list → plain lines: skip an intro line, strip "- " or two-space indentation.

    The first line is skipped unless it starts with "-" (models open with "Here are
    the facts:"); each line then loses one leading "- " or one two-space indent, so
    nested items keep their inner bullet ("  - sub" → "- sub").
    """
    lines = text.strip().split(LINE_SEPARATOR)
    if not lines[0].startswith("-"):
        lines = lines[1:]
    cleaned = (line[2:] if line.startswith(("- ", "  ")) else line for line in lines)
    return LINE_SEPARATOR.join(cleaned).strip()


# -- task chains ---------------------------------------------------------------------


def postprocess_paraphrase(
    answer: str,
    finish_reason: str | None,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    prefix: str,
    min_tokens: int | None,
) -> PostResult:
    """Wikipedia and Distill: truncation → markdown → required prefix → quotes → min length.

    Wikipedia passes ``min_tokens=None``: its minimum applies to the re-joined document.
    """
    if is_truncated(answer, finish_reason, tokenizer, max_tokens):
        return Dropped(FilterReason.TRUNCATED)
    body = strip_prefix(remove_markdown(answer), prefix)
    if body is None:
        return Dropped(FilterReason.MISSING_PREFIX)
    return at_least(remove_wrapping_quotes(body), tokenizer, min_tokens)


def postprocess_diverse_qa(
    answer: str,
    finish_reason: str | None,
    segment: str,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    prefix: str | None,
    rng: random.Random,
    min_tokens: int,
) -> PostResult:
    """DiverseQA: truncation → markdown → pairs → segment + sampled pairs → min length."""
    if is_truncated(answer, finish_reason, tokenizer, max_tokens):
        return Dropped(FilterReason.TRUNCATED)
    pairs = parse_qa_pairs(remove_markdown(answer), prefix)
    if not pairs:
        return Dropped(FilterReason.NO_QA_PAIRS)
    return at_least(sample_qa_pairs(segment, pairs, tokenizer, rng), tokenizer, min_tokens)


def postprocess_extract_knowledge(
    answer: str,
    finish_reason: str | None,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    min_tokens: int,
) -> PostResult:
    """ExtractKnowledge: truncation → markdown → "Passage N:" headings → min length."""
    if is_truncated(answer, finish_reason, tokenizer, max_tokens):
        return Dropped(FilterReason.TRUNCATED)
    text = remove_lines(remove_markdown(answer), PASSAGE_HEADINGS)
    return at_least(text, tokenizer, min_tokens)


def postprocess_knowledge_list(
    answer: str,
    finish_reason: str | None,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    min_tokens: int,
) -> PostResult:
    """KnowledgeList: truncation → markdown → list clean-up → min length."""
    if is_truncated(answer, finish_reason, tokenizer, max_tokens):
        return Dropped(FilterReason.TRUNCATED)
    return at_least(clean_knowledge_list(remove_markdown(answer)), tokenizer, min_tokens)
