"""What ``streamsynth demo`` runs and reports: its stages and topics, the result, the
records and summary it prints and the files it writes."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

SIM_MODEL = "sim-model"
INPUT_TOPIC = "demo.documents"
DLQ_TOPIC = "demo.dlq"
FILTERED_TOPIC = "demo.filtered"
GROUP_ID = "streamsynth-demo"
#: Requests the worker keeps in flight: one per model slot (more would queue there).
SLOTS = 4

#: (stage name, task, output field, output topic); the custom stage always yields a
#: record, the Nemotron-CC tasks may filter a small model's answers (and say why).
DEMO_STAGES = (
    ("summary", "custom", "summary", "demo.summary"),
    ("knowledge_list", "knowledge_list", "knowledge_list", "demo.knowledge_list"),
    ("extract_knowledge", "extract_knowledge", "extract_knowledge", "demo.extract_knowledge"),
)
SUMMARY_SYSTEM = "You are a helpful assistant who writes short, accurate summaries."
SUMMARY_PROMPT = "Summarize the following text in two or three sentences.\n\nText:\n{document}"


@dataclass
class DemoResult:
    documents: int
    processed: int
    elapsed_s: float
    model: str
    kind: str  # "local model" or "simulator"
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    requests: float = 0.0
    max_inflight: int = 0
    timed_out: bool = False


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("streamsynth")
    return meta if isinstance(meta, dict) else {}


def show_records(console: Console, result: DemoResult, count: int) -> None:
    """Up to ``count`` generated records, taking one stage after another for variety."""
    queues = [
        (name, field_, list(result.rows.get(topic, ())))
        for name, _task, field_, topic in DEMO_STAGES
    ]
    shown = 0
    while shown < count and any(q for *_, q in queues):
        for name, field_, queue in queues:
            if not queue or shown >= count:
                continue
            row = queue.pop(0)
            meta = _meta(row)
            text = str(row.get(field_, ""))
            if len(text) > 700:
                text = text[:700].rstrip() + " ..."
            title = f"[bold]{escape(name)}[/] · {escape(str(row.get('id', '?')))}"
            subtitle = (
                f"model {escape(str(meta.get('model')))} · "
                f"{meta.get('completion_tokens', '?')} tokens · "
                f"{float(meta.get('latency_s') or 0):.2f} s"
            )
            console.print(Panel(escape(text), title=title, subtitle=subtitle, expand=True))
            shown += 1


def stage_summary(result: DemoResult) -> list[dict[str, Any]]:
    """Per stage: outputs, filtered (by reason), DLQ, tokens and latency of the outputs."""
    filtered: dict[str, Counter[str]] = defaultdict(Counter)
    for row in result.rows.get(FILTERED_TOPIC, ()):
        meta = _meta(row)
        filtered[str(meta.get("stage"))][str(meta.get("filtered"))] += 1
    dlq: dict[str, Counter[str]] = defaultdict(Counter)
    for row in result.rows.get(DLQ_TOPIC, ()):
        headers = row.get("_headers", {})
        stage = headers.get("streamsynth.error.stage", "?")
        dlq[stage][headers.get("streamsynth.error.reason", "?")] += 1
    out = []
    for name, _task, _field, topic in DEMO_STAGES:
        metas = [_meta(r) for r in result.rows.get(topic, ())]
        latencies = [float(m.get("latency_s") or 0.0) for m in metas]
        out.append(
            {
                "stage": name,
                "outputs": len(metas),
                "filtered": dict(filtered.get(name, {})),
                "dlq": dict(dlq.get(name, {})),
                "completion_tokens": sum(int(m.get("completion_tokens") or 0) for m in metas),
                "mean_latency_s": statistics.fmean(latencies) if latencies else None,
                "models": sorted({str(m.get("model")) for m in metas}),
            }
        )
    decode_dlq = dict(dlq.get("decode", {}))
    if decode_dlq:
        out.append({"stage": "decode", "outputs": 0, "filtered": {}, "dlq": decode_dlq})
    return out


def _count(counts: dict[str, int]) -> str:
    return str(sum(counts.values()))


def _reason_lines(kind: str, stages: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in stages:
        if s[kind]:
            why = ", ".join(f"{reason} x{n}" for reason, n in sorted(s[kind].items()))
            lines.append(f"  {s['stage']}: {why}")
    return lines


def print_summary(console: Console, result: DemoResult, stages: list[dict[str, Any]]) -> None:
    table = Table(title="streamsynth demo: summary", title_justify="left")
    table.add_column("stage", no_wrap=True)
    for col in ("records", "filtered", "DLQ", "output tokens", "mean latency"):
        table.add_column(col, justify="right")
    for s in stages:
        latency = s.get("mean_latency_s")
        table.add_row(
            s["stage"],
            str(s["outputs"]),
            _count(s["filtered"]),
            _count(s["dlq"]),
            str(s.get("completion_tokens", 0)),
            f"{latency:.1f} s" if latency is not None else "-",
        )
    console.print(table)
    console.print(
        f"[dim]latency: request to answer, including the wait for one of the {SLOTS} request "
        "slots.[/]"
    )
    filtered = _reason_lines("filtered", stages)
    if filtered:
        console.print("filtered, by reason (the Nemotron-CC post-filters; a 135M model trips them")
        console.print("often, a large model rarely):")
        for line in filtered:
            console.print(escape(line))
    dead = _reason_lines("dlq", stages)
    if dead:
        console.print("dead-lettered, by reason:")
        for line in dead:
            console.print(escape(line))
    tokens_in = int(result.tokens.get("input", 0))
    tokens_out = int(result.tokens.get("output", 0))
    console.print(
        f"documents: {result.processed}/{result.documents} processed in "
        f"{result.elapsed_s:.1f} s · LLM: {escape(result.model)} ({result.kind}), "
        f"{int(result.requests)} requests, tokens in {tokens_in} / out {tokens_out} · "
        f"DLQ: {len(result.rows.get(DLQ_TOPIC, ()))} records"
    )
    console.print(f"requests in flight at once: {result.max_inflight} (max seen; {SLOTS} slots)")


def write_outputs(directory: Path, result: DemoResult, stages: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, _task, _field, topic in DEMO_STAGES:
        with (directory / f"{name}.jsonl").open("wb") as fh:
            for row in result.rows.get(topic, ()):
                clean = {k: v for k, v in row.items() if k != "_headers"}
                fh.write(orjson.dumps(clean) + b"\n")
    summary = {
        "documents": result.documents,
        "processed": result.processed,
        "elapsed_s": round(result.elapsed_s, 3),
        "llm": {"model": result.model, "kind": result.kind},
        "requests": result.requests,
        "max_inflight_requests": result.max_inflight,
        "tokens": result.tokens,
        "dlq": len(result.rows.get(DLQ_TOPIC, ())),
        "stages": stages,
    }
    (directory / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
