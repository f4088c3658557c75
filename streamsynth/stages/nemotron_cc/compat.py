"""How closely a Nemotron-CC stage follows NeMo Curator 1.4.0's tutorial chain.

``curator_compat`` selects one of two behaviours per stage:

* ``exact``: Curator 1.4.0's decisions and texts bit for bit, its known bugs
  included, so a dataset made with Curator's tutorial can be regenerated;
* ``fixes`` (the default): the same chain with every :class:`Fix` below applied.

Each fix is a rule of Curator's that is arguably a bug, or a small addition of
ours; README's Nemotron-CC section lists them with a one-line example each. The
side-by-side test (``tests/stages/test_nemotron_vs_curator.py``) checks that
``exact`` matches Curator everywhere and that every difference of ``fixes`` is
explained by these fixes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

CuratorCompat = Literal["exact", "fixes"]
CURATOR_COMPAT_MODES: tuple[str, ...] = get_args(CuratorCompat)


class Fix(StrEnum):
    """One documented divergence of ``curator_compat: fixes`` from Curator 1.4.0."""

    #: An answer the server reports as cut (finish_reason "length") is dropped even
    #: when it is under the token threshold (Curator only sees the text).
    FINISH_REASON = "finish_reason"
    #: A segment made only of whitespace is not sent to the LLM.
    BLANK_SEGMENT = "blank_segment"
    #: Markdown removal leaves "_" and "*" inside words, numbers and URLs alone.
    MARKDOWN = "markdown"
    #: A required prefix after leading whitespace is accepted.
    PREFIX_WHITESPACE = "prefix_whitespace"
    #: A paraphrase with nothing after its prefix (or only quotes) is dropped.
    EMPTY_PARAPHRASE = "empty_paraphrase"
    #: Wrapping quotes are removed only when one pair wraps the whole answer (or each
    #: line); curly quotes and guillemets count; the text inside is trimmed.
    QUOTES = "quotes"
    #: ExtractKnowledge's "Passage N:" headings are matched after stripping the line.
    HEADINGS = "headings"
    #: KnowledgeList: leading blank lines and indentation do not hide the first bullet.
    LIST_INDENT = "list_indent"
    #: DiverseQA: a prefix on the same line as the first question keeps the pairs.
    QA_PREFIX_LINE = "qa_prefix_line"
    #: ExtractKnowledge and KnowledgeList outputs lose leading/trailing whitespace.
    TRIM = "trim"
    #: The default stop list is ["</s>"], which the tutorial means; it sends the literal
    #: string "['</s>']" as its one stop sequence.
    STOP_LIST = "stop_list"


ALL_FIXES: frozenset[Fix] = frozenset(Fix)
NO_FIXES: frozenset[Fix] = frozenset()


def fixes_for(mode: CuratorCompat) -> frozenset[Fix]:
    """The fixes a ``curator_compat`` mode applies."""
    if mode == "exact":
        return NO_FIXES
    if mode == "fixes":
        return ALL_FIXES
    raise ValueError(f"curator_compat must be one of {', '.join(CURATOR_COMPAT_MODES)}: {mode!r}")
