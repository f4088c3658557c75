"""Nemotron-CC pre-processing: a document becomes the segments sent to the LLM.

The chain, applied to each document in this order (NeMo Curator's
``add_preprocessing_pipeline``):

1. document token filter: keep ``min_document_tokens <= n <= max_document_tokens``;
2. split on "\\n", one line each (blank lines included, at 0 tokens);
3. drop every line longer than the segment budget (long lines are dropped, never cut);
4. greedily join adjacent surviving lines with "\\n" while the total, counting one
   token per join, stays within the budget (a dropped line does not break adjacency);
5. drop segments under ``min_segment_tokens``.

The segment budget is what the prompt leaves of the task's input limit
(:func:`segment_budget`), as in Curator's tutorial and the Nemotron-CC paper.

One addition (``drop_blank_segments``, the ``blank_segment`` fix): a segment made
only of whitespace (blank lines whose joins add up to the minimum) is dropped too;
it would cost a request for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from streamsynth.stages.nemotron_cc.tokenizer import Tokenizer

#: The separator of lines inside a document and a segment.
LINE_SEPARATOR = "\n"
#: What one join costs against the budget (NeMo counts len(separator)).
JOIN_TOKENS = len(LINE_SEPARATOR)
#: Curator's safety margin between prompt + segment and the input limit.
BUDGET_MARGIN = 2


class FilterReason(StrEnum):
    """Why a record, segment or output was dropped: a small fixed set (a metrics label)."""

    DOCUMENT_TOO_SHORT = "document_too_short"
    DOCUMENT_TOO_LONG = "document_too_long"
    NO_SEGMENTS = "no_segments"
    TRUNCATED = "truncated"
    MISSING_PREFIX = "missing_prefix"
    NO_QA_PAIRS = "no_qa_pairs"
    OUTPUT_TOO_SHORT = "output_too_short"


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Segment:
    """Adjacent lines of one document joined with "\\n"; ``tokens`` includes the joins."""

    index: int
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Preprocessed:
    """The segments of a document in order, or why there are none."""

    segments: tuple[Segment, ...] = ()
    filtered: FilterReason | None = None


def split_lines(text: str, tokenizer: Tokenizer) -> list[Line]:
    """Every "\\n"-separated line of ``text`` (blank ones included) with its token count."""
    return [Line(line, tokenizer.count(line)) for line in text.split(LINE_SEPARATOR)]


def join_lines(lines: Iterable[Line], max_tokens: int) -> list[Segment]:
    """Greedily pack lines, in order, into segments of at most ``max_tokens`` tokens.

    Lines over the budget are dropped; a join costs :data:`JOIN_TOKENS`.
    """
    segments: list[Segment] = []
    current: list[str] = []
    used = 0
    for line in lines:
        if line.tokens > max_tokens:
            continue
        if current and used + JOIN_TOKENS + line.tokens <= max_tokens:
            current.append(line.text)
            used += JOIN_TOKENS + line.tokens
            continue
        if current:
            segments.append(_segment(len(segments), current, used))
        current, used = [line.text], line.tokens
    if current:
        segments.append(_segment(len(segments), current, used))
    return segments


def _segment(index: int, lines: Sequence[str], tokens: int) -> Segment:
    return Segment(index, LINE_SEPARATOR.join(lines), tokens)


def segment_budget(
    max_input_tokens: int, tokenizer: Tokenizer, system_prompt: str | None, template: str
) -> int:
    """The largest segment: the input limit less the prompt and a 2-token margin.

    The prompt is counted as Curator's tutorial counts it: the system prompt, "\n"
    and the user template, placeholder included (its ``{text}`` replacement does not
    match our ``{document}``; we keep the count identical).
    """
    prefix = f"{system_prompt}\n{template}" if system_prompt else template
    return max_input_tokens - tokenizer.count(prefix) - BUDGET_MARGIN


def preprocess_document(
    text: str,
    tokenizer: Tokenizer,
    *,
    min_document_tokens: int,
    max_segment_tokens: int,
    min_segment_tokens: int,
    max_document_tokens: int | None = None,
    drop_blank_segments: bool = True,
) -> Preprocessed:
    """Apply the whole chain to one document; segments are re-numbered from 0 in order."""
    document_tokens = tokenizer.count(text)
    if document_tokens < min_document_tokens:
        return Preprocessed(filtered=FilterReason.DOCUMENT_TOO_SHORT)
    if max_document_tokens is not None and document_tokens > max_document_tokens:
        return Preprocessed(filtered=FilterReason.DOCUMENT_TOO_LONG)
    joined = join_lines(split_lines(text, tokenizer), max_segment_tokens)
    kept = [
        s
        for s in joined
        if s.tokens >= min_segment_tokens and (s.text.strip() or not drop_blank_segments)
    ]
    if not kept:
        return Preprocessed(filtered=FilterReason.NO_SEGMENTS)
    return Preprocessed(tuple(Segment(i, s.text, s.tokens) for i, s in enumerate(kept)))
