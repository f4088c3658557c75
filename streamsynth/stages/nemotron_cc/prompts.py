"""streamsynth's own prompt texts for the five Nemotron-CC tasks.

Written from the task definitions (the Nemotron-CC paper and NeMo Curator's task
reference), not copied. Each user template has exactly one ``{document}``
placeholder. A task whose post-processing requires a prefix ends with the line
``Start your answer with "PREFIX"``: stating the exact string makes models comply
far more often than describing it, and the post-processing drops answers without it.
"""

from __future__ import annotations

WIKIPEDIA_PREFIX = "Here is a paraphrased version:"
DISTILL_PREFIX = "Paraphrased Text:"
DIVERSE_QA_PREFIX = "Here are the questions and answers based on the provided text:"


def start_with(prefix: str) -> str:
    """The instruction line that asks for ``prefix`` (the LLM simulator keys on it)."""
    return f'Start your answer with "{prefix}"'


SYSTEM_PROMPT = (
    "You are a careful, knowledgeable writing assistant. You follow the user's "
    "instructions and output format exactly, stay faithful to the text you are given, "
    "and never add facts that the text does not support."
)

DISTILL_SYSTEM_PROMPT = (
    "You are a precise assistant with strong reasoning skills. You condense text "
    "without losing its meaning, keep every technical term, number and example that "
    "matters, and follow the requested output format exactly."
)

WIKIPEDIA_PARAPHRASING_PROMPT = f"""\
Below is a piece of text from the web. Rewrite it in clear, well-formed English in the \
style of a Wikipedia article: a neutral tone, complete sentences and a logical order. Keep \
all of its information, leave out navigation text, advertisements and other boilerplate, \
and do not invent facts. Write prose only, without headings, lists or formatting.

Text:
{{document}}

{start_with(WIKIPEDIA_PREFIX)}"""

DIVERSE_QA_PROMPT = f"""\
Read the text below and write up to eight questions about it, each followed by its \
answer. Vary the kinds of question: yes/no, open-ended, multiple choice (give the options \
in the question), comparisons, reading comprehension, and problems that need reasoning or \
a calculation. Every question must be answerable from the text alone, and every answer \
must be correct and self-contained: name the specific people, places, numbers and terms \
instead of referring to "the text".

Text:
{{document}}

Use exactly this format, one pair per bullet:
- Question: <the question> Answer: <the answer>

{start_with(DIVERSE_QA_PREFIX)}"""

DISTILL_PROMPT = f"""\
Rewrite the text below as a shorter, clearer version with the same meaning. Keep its key \
ideas, technical terms, numbers and illustrative examples; remove repetition, filler and \
anything unrelated to the main content. Write plain paragraphs and do not add information \
that is not in the text.

Text:
{{document}}

{start_with(DISTILL_PREFIX)}"""

EXTRACT_KNOWLEDGE_PROMPT = """\
Turn the text below into one or more passages of the kind found in a textbook or an \
encyclopedia. Keep every fact, definition, explanation and piece of know-how it contains \
and state each one clearly and precisely. Leave out opinions, anecdotes, advertisements, \
navigation text and anything else that carries no information, and do not add facts that \
are not in the text. Write plain prose without markdown.

Text:
{document}"""

KNOWLEDGE_LIST_PROMPT = """\
Extract the knowledge contained in the text below as a bulleted list. Cover its facts, \
figures, names, dates, definitions and key concepts, one short self-contained statement \
per bullet, with related items next to each other. Do not add anything that is not in the \
text, and leave out opinions and filler.

Text:
{document}"""
