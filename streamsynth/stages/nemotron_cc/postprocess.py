"""Nemotron-CC post-processing: pure functions from an LLM answer to kept text or a drop.

Each task's chain (``postprocess_*``) returns the text to keep or a :class:`Dropped`
with a :class:`FilterReason`. The steps follow NeMo Curator 1.4.0's Nemotron-CC
post-processing pipelines. Every step takes ``fixes``: with none, it is Curator's
rule exactly (bugs included); each :class:`~streamsynth.stages.nemotron_cc.compat.Fix`
it is given switches on one documented divergence (all of them by default).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from streamsynth.stages.nemotron_cc.compat import ALL_FIXES, Fix
from streamsynth.stages.nemotron_cc.preprocess import LINE_SEPARATOR, FilterReason
from streamsynth.stages.nemotron_cc.tokenizer import Tokenizer, count_plain

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


@dataclass(frozen=True, slots=True)
class Rules:
    """What a task's chain needs besides the answer: counts, budgets, fixes."""

    tokenizer: Tokenizer
    #: The longest answer not treated as truncated (the output budget minus 2).
    max_tokens: int
    #: The shortest kept output; None: no minimum at this level (Wikipedia segments).
    min_tokens: int | None
    prefix: str | None
    fixes: frozenset[Fix] = ALL_FIXES


#: A task's chain: (answer text, finish_reason, segment, rules, rng) -> kept text or drop.
TaskPostprocess = Callable[[str, str | None, str, Rules, random.Random], PostResult]


# -- generic steps -------------------------------------------------------------------


def is_truncated(
    text: str,
    finish_reason: str | None,
    tokenizer: Tokenizer,
    max_tokens: int,
    *,
    fixes: Collection[Fix] = ALL_FIXES,
) -> bool:
    """True when the answer hit its length cap: it is over ``max_tokens`` or (the
    ``finish_reason`` fix) the server said so.

    ``max_tokens`` is the output budget minus 2 (NeMo's margin for counting drift).
    """
    if Fix.FINISH_REASON in fixes and finish_reason == "length":
        return True
    return tokenizer.count(text) > max_tokens


def at_least(
    text: str,
    tokenizer: Tokenizer,
    min_tokens: int | None,
    *,
    fixes: Collection[Fix] = ALL_FIXES,
) -> PostResult:
    """``text`` if it has ``min_tokens`` tokens (None: no minimum).

    With the ``empty_paraphrase`` fix, blank text is dropped whatever the minimum.
    """
    if Fix.EMPTY_PARAPHRASE in fixes and not text.strip():
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


# Curator's rules: non-greedy pairs of markers anywhere, in this order, then links.
_CURATOR_MARKDOWN = (
    (re.compile(r"\*\*(.*?)\*\*"), r"\1"),
    (re.compile(r"\*(.*?)\*"), r"\1"),
    (re.compile(r"_(.*?)_"), r"\1"),
    (re.compile(r"\[.*?\]\((.*?)\)"), r"\1"),
)


def remove_markdown(text: str, *, fixes: Collection[Fix] = ALL_FIXES) -> str:
    """Drop bold/italic/underline markers and turn ``[text](url)`` into ``url``, line by line.

    With the ``markdown`` fix, only real emphasis goes: URLs are protected and a
    marker inside a word or number stays ("a_b_c", "2*3*4"); without it, Curator's
    rule removes every pair of markers it finds.
    """
    line_fn = _remove_markdown_line if Fix.MARKDOWN in fixes else _curator_markdown_line
    return LINE_SEPARATOR.join(line_fn(line) for line in text.split(LINE_SEPARATOR))


def _curator_markdown_line(line: str) -> str:
    for pattern, replacement in _CURATOR_MARKDOWN:
        line = pattern.sub(replacement, line)
    return line


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


def strip_prefix(text: str, prefix: str, *, fixes: Collection[Fix] = ALL_FIXES) -> str | None:
    """The answer after its required ``prefix``, stripped; None if it does not start with it.

    With the ``prefix_whitespace`` fix, leading whitespace is ignored (models often
    open with a newline); a prefix found later in the answer never counts: the model
    did not follow the format.
    """
    stripped = text.lstrip() if Fix.PREFIX_WHITESPACE in fixes else text
    if not stripped.startswith(prefix):
        return None
    return stripped[len(prefix) :].strip()


_QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb", "\u300c": "\u300d"}


def remove_wrapping_quotes(text: str, *, fixes: Collection[Fix] = ALL_FIXES) -> str:
    """Remove quotes the model wrapped around its whole answer (or around every line of it).

    With the ``quotes`` fix: the first and last characters must be a matching pair
    (straight or curly double quotes, guillemets, corner brackets) and the opening
    quote must close at the very end, so ``"A" and "B"`` keeps its quotes. Curly pairs
    are matched by nesting; straight quotes cannot nest, so the first straight quote
    after the opening one must be the last character. Single quotes are never touched
    (apostrophes). If the whole text is not wrapped but every non-blank line is, each
    line is unwrapped. Without it, Curator's rule (:func:`_curator_quotes`).
    """
    if Fix.QUOTES not in fixes:
        return _curator_quotes(text)
    stripped = text.strip()
    if _is_wrapped(stripped):
        return stripped[1:-1].strip()
    lines = stripped.split(LINE_SEPARATOR)
    if len(lines) > 1 and all(_is_wrapped(line.strip()) for line in lines if line.strip()):
        return LINE_SEPARATOR.join(line.strip()[1:-1].strip() for line in lines).strip()
    return stripped


def _curator_quotes(text: str) -> str:
    """Curator's rule: drop the first and last characters when both are '"' and the
    text has more than 2 visible characters, unless it is multi-line and its first
    line ends with '"'. (It unwraps ``"A." and then "B."`` into ``A." and then "B.``.)
    """
    stripped = text.strip()
    wrapped = len(stripped) > 2 and text[0] == '"' and text[-1] == '"'
    one_line = LINE_SEPARATOR not in stripped
    if wrapped and (one_line or text.split(LINE_SEPARATOR)[0][-1] != '"'):
        return text[1:-1]
    return text


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


def remove_lines(text: str, exact: Collection[str], *, fixes: Collection[Fix] = ALL_FIXES) -> str:
    """Drop the lines equal to one of ``exact``.

    ``headings`` fix: a line is compared after stripping it; ``trim`` fix: the result
    is stripped. Without them, Curator's exact-line match and untrimmed result.
    """
    strip_lines = Fix.HEADINGS in fixes
    kept = (
        line
        for line in text.split(LINE_SEPARATOR)
        if (line.strip() if strip_lines else line) not in exact
    )
    joined = LINE_SEPARATOR.join(kept)
    return joined.strip() if Fix.TRIM in fixes else joined


def rejoin_segments(texts: Iterable[str]) -> str:
    """The document-level text of segment outputs, in segment order."""
    return LINE_SEPARATOR.join(texts)


# -- DiverseQA -----------------------------------------------------------------------


def parse_qa_pairs(
    text: str, prefix: str | None, *, fixes: Collection[Fix] = ALL_FIXES
) -> list[str]:
    """The "Question: ... Answer: ..." pairs of a DiverseQA answer, in order.

    Non-blank lines are stripped and lose a leading "- "; a first line equal to
    ``prefix`` is dropped (with the ``qa_prefix_line`` fix, the prefix is removed from
    the start of the first line and the rest kept: models put the first pair on the
    prefix's line). Each "Question:" line starts a pair that takes the lines after it
    (multi-line answers). A non-question line before the first question means the
    format was not followed: no pairs.
    """
    lines = [_unbullet(line) for line in text.split(LINE_SEPARATOR) if line.strip()]
    if lines and prefix is not None:
        if Fix.QA_PREFIX_LINE in fixes and lines[0].startswith(prefix):
            rest = _unbullet(lines[0][len(prefix) :])
            lines = [rest, *lines[1:]] if rest else lines[1:]
        elif lines[0] == prefix:
            lines = lines[1:]
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
    """How many pairs to keep: uniform in 1..max(1, int(10 x tokens / 150)), ~1 per 15 tokens.

    The segment's own tokens are counted, without special tokens (Curator's
    ``len(tokenizer.tokenize(text))``).
    """
    return rng.randint(1, max(1, int(10 * count_plain(tokenizer, segment) / 150)))


def sample_qa_pairs(
    segment: str, pairs: Sequence[str], tokenizer: Tokenizer, rng: random.Random
) -> str:
    """The segment followed by a random subset of its QA pairs, in random order."""
    chosen = list(pairs)
    rng.shuffle(chosen)
    keep = qa_sample_size(segment, tokenizer, rng)
    return segment + QA_SEPARATOR + QA_SEPARATOR.join(chosen[:keep])


# -- KnowledgeList -------------------------------------------------------------------


def clean_knowledge_list(text: str, *, fixes: Collection[Fix] = ALL_FIXES) -> str:
    """Bullet list → plain lines: skip an intro line, strip "- " or two-space indentation.

    The first line is skipped unless it starts with "-" (models open with "Here are
    the facts:"); each line then loses one leading "- " or one two-space indent and
    is stripped, so nested items keep their inner bullet ("  - sub" → "- sub").
    ``list_indent`` fix: the text is stripped first, so leading blank lines or an
    indented first bullet do not cost the first item; ``trim`` fix: so is the result.
    """
    lines = (text.strip() if Fix.LIST_INDENT in fixes else text).split(LINE_SEPARATOR)
    if not lines[0].startswith("-"):
        lines = lines[1:]
    cleaned = (line[2:].strip() if line.startswith(("- ", "  ")) else line for line in lines)
    joined = LINE_SEPARATOR.join(cleaned)
    return joined.strip() if Fix.TRIM in fixes else joined


# -- task chains ---------------------------------------------------------------------


def postprocess_paraphrase(
    answer: str,
    finish_reason: str | None,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    prefix: str,
    min_tokens: int | None,
    fixes: Collection[Fix] = ALL_FIXES,
) -> PostResult:
    """Wikipedia and Distill: truncation → markdown → required prefix → quotes → min length.

    Wikipedia passes ``min_tokens=None``: its minimum applies to the re-joined document.
    """
    if is_truncated(answer, finish_reason, tokenizer, max_tokens, fixes=fixes):
        return Dropped(FilterReason.TRUNCATED)
    body = strip_prefix(remove_markdown(answer, fixes=fixes), prefix, fixes=fixes)
    if body is None:
        return Dropped(FilterReason.MISSING_PREFIX)
    return at_least(remove_wrapping_quotes(body, fixes=fixes), tokenizer, min_tokens, fixes=fixes)


def postprocess_diverse_qa(
    answer: str,
    finish_reason: str | None,
    segment: str,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    prefix: str | None,
    rng: random.Random,
    min_tokens: int | None,
    fixes: Collection[Fix] = ALL_FIXES,
) -> PostResult:
    """DiverseQA: truncation → markdown → pairs → segment + sampled pairs → min length."""
    if is_truncated(answer, finish_reason, tokenizer, max_tokens, fixes=fixes):
        return Dropped(FilterReason.TRUNCATED)
    pairs = parse_qa_pairs(remove_markdown(answer, fixes=fixes), prefix, fixes=fixes)
    if not pairs:
        return Dropped(FilterReason.NO_QA_PAIRS)
    sampled = sample_qa_pairs(segment, pairs, tokenizer, rng)
    return at_least(sampled, tokenizer, min_tokens, fixes=fixes)


def postprocess_extract_knowledge(
    answer: str,
    finish_reason: str | None,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    min_tokens: int | None,
    fixes: Collection[Fix] = ALL_FIXES,
) -> PostResult:
    """ExtractKnowledge: truncation → markdown → "Passage N:" headings → min length."""
    if is_truncated(answer, finish_reason, tokenizer, max_tokens, fixes=fixes):
        return Dropped(FilterReason.TRUNCATED)
    text = remove_lines(remove_markdown(answer, fixes=fixes), PASSAGE_HEADINGS, fixes=fixes)
    return at_least(text, tokenizer, min_tokens, fixes=fixes)


def postprocess_knowledge_list(
    answer: str,
    finish_reason: str | None,
    *,
    tokenizer: Tokenizer,
    max_tokens: int,
    min_tokens: int | None,
    fixes: Collection[Fix] = ALL_FIXES,
) -> PostResult:
    """KnowledgeList: truncation → markdown → list clean-up → min length."""
    if is_truncated(answer, finish_reason, tokenizer, max_tokens, fixes=fixes):
        return Dropped(FilterReason.TRUNCATED)
    text = clean_knowledge_list(remove_markdown(answer, fixes=fixes), fixes=fixes)
    return at_least(text, tokenizer, min_tokens, fixes=fixes)


# -- the same chains with one signature, for the task registry -----------------------


def _common(rules: Rules) -> dict[str, Any]:
    """The keyword arguments every chain takes, from ``rules``."""
    return {
        "tokenizer": rules.tokenizer,
        "max_tokens": rules.max_tokens,
        "min_tokens": rules.min_tokens,
        "fixes": rules.fixes,
    }


def paraphrase_chain(
    answer: str, finish_reason: str | None, segment: str, rules: Rules, rng: random.Random
) -> PostResult:
    """:func:`postprocess_paraphrase` as a :data:`TaskPostprocess`."""
    if rules.prefix is None:
        raise ValueError("a paraphrase task needs a prefix")
    return postprocess_paraphrase(answer, finish_reason, prefix=rules.prefix, **_common(rules))


def diverse_qa_chain(
    answer: str, finish_reason: str | None, segment: str, rules: Rules, rng: random.Random
) -> PostResult:
    """:func:`postprocess_diverse_qa` as a :data:`TaskPostprocess`."""
    return postprocess_diverse_qa(
        answer, finish_reason, segment, prefix=rules.prefix, rng=rng, **_common(rules)
    )


def extract_knowledge_chain(
    answer: str, finish_reason: str | None, segment: str, rules: Rules, rng: random.Random
) -> PostResult:
    """:func:`postprocess_extract_knowledge` as a :data:`TaskPostprocess`."""
    return postprocess_extract_knowledge(answer, finish_reason, **_common(rules))


def knowledge_list_chain(
    answer: str, finish_reason: str | None, segment: str, rules: Rules, rng: random.Random
) -> PostResult:
    """:func:`postprocess_knowledge_list` as a :data:`TaskPostprocess`."""
    return postprocess_knowledge_list(answer, finish_reason, **_common(rules))
