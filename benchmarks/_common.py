"""Shared plumbing of the end-to-end benchmarks (llm-bound, vs-curator, memory, scale).

* synthetic documents (our own word list, seeded);
* result tables (rich) and JSON files under ``bench-results/``;
* latency arithmetic: the simulator's seeded draws replayed, the ideal makespan of a
  perfect N-slot client, and throughput over a steady-state window;
* the workload's worker configuration (:func:`worker_settings`).

Running workers and reading topics is the shared harness's job
(:mod:`streamsynth.testing.harness`: the same worker process, producer, watcher and
offset reads the tests use); its names are re-exported here for the benchmarks.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
from rich.console import Console
from rich.table import Table

from streamsynth.local.llm_simulator import LatencyModel
from streamsynth.local.process import sigterm_exits
from streamsynth.testing import harness

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path("bench-results")
Z99 = 2.3263478740408408  # standard normal quantile of 0.99

# -- documents -------------------------------------------------------------------------

_WORDS = [
    "river",
    "valley",
    "stone",
    "harbor",
    "market",
    "engine",
    "signal",
    "garden",
    "forest",
    "bridge",
    "circuit",
    "ledger",
    "meadow",
    "lantern",
    "copper",
    "glacier",
    "orbit",
    "canyon",
    "harvest",
    "archive",
    "compass",
    "timber",
    "quarry",
    "beacon",
    "delta",
    "prairie",
    "furnace",
    "vessel",
    "tunnel",
    "reef",
    "summit",
    "measure",
    "gather",
    "record",
    "travel",
    "shape",
    "carry",
    "build",
    "follow",
    "divide",
    "balance",
    "observe",
    "predict",
    "collect",
    "describe",
    "compare",
    "explain",
    "connect",
    "protect",
    "recover",
    "steady",
    "ancient",
    "narrow",
    "bright",
    "quiet",
    "rapid",
    "fertile",
    "coastal",
    "northern",
    "hollow",
    "rural",
    "modern",
    "humid",
    "sparse",
    "dense",
    "shallow",
    "remote",
    "local",
    "annual",
    "gradual",
]
_JOINERS = ("and", "while", "because", "although", "so", "after", "before", "where")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 14))]
    if len(words) > 8:
        words.insert(rng.randint(3, len(words) - 3), rng.choice(_JOINERS))
    return " ".join(words).capitalize() + "."


def make_text(rng: random.Random, mean_words: int) -> str:
    """A paragraph of roughly ``mean_words`` words (sentences of 6..15 words)."""
    target = max(8, int(rng.gauss(mean_words, mean_words / 5)))
    sentences: list[str] = []
    count = 0
    while count < target:
        s = _sentence(rng)
        sentences.append(s)
        count += s.count(" ") + 1
    return " ".join(sentences)


def make_documents(
    n: int, *, seed: int = 0, mean_words: int = 120, id_prefix: str = "doc"
) -> list[dict[str, str]]:
    """``n`` records ``{"id", "text"}``, identical for the same seed (both sides of a
    comparison get the same document set)."""
    rng = random.Random(seed)
    return [{"id": f"{id_prefix}-{i}", "text": make_text(rng, mean_words)} for i in range(n)]


# -- output ------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    notes: Iterable[str] = (),
    console: Console | None = None,
) -> None:
    """Print a result table and the notes that say how it was measured."""
    console = console or Console(width=120)
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)
    for note in notes:
        console.print(f"  - {note}", highlight=False, soft_wrap=True)


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``bench-results/NAME.json`` (directory created on demand) and return its path."""
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    data = {"benchmark": name, "created_unix": round(time.time(), 3), **payload}
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


def save_result(name: str, args: Any, payload: dict[str, Any]) -> Path:
    """Write the run's JSON with its parsed arguments as ``params``; print where it went."""
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_json(name, {"params": params, **payload}, args.out_dir)
    print(f"wrote {path}")
    return path


# -- latency arithmetic -----------------------------------------------------------------


def lognormal_mean(median_s: float, p99_s: float) -> float:
    """Analytic mean of a lognormal given by its median and p99."""
    sigma = math.log(p99_s / median_s) / Z99
    return median_s * math.exp(sigma * sigma / 2)


def replay_draws(latency: LatencyModel, seed: int, n: int) -> list[float]:
    """The first ``n`` latencies the simulator draws with ``seed``.

    With no probabilistic faults and no rate limits the simulator's seeded RNG is used
    for nothing but the latency, one draw per request in arrival order, so replaying
    it gives the exact draws the run received.
    """
    rng = random.Random(seed)
    return [latency.base_s(rng) for _ in range(n)]


def ideal_makespan(draws: Sequence[float], concurrency: int) -> float:
    """Wall time of a perfect client: ``concurrency`` slots, each request started the
    instant a slot frees, in the order drawn (greedy list scheduling, zero overhead)."""
    slots = [0.0] * concurrency
    end = 0.0
    for d in draws:
        t = heapq.heappop(slots) + d
        heapq.heappush(slots, t)
        end = max(end, t)
    return end


def steady_rate(arrivals: Sequence[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Records/s between the ``lo`` and ``hi`` quantiles of the completion times.

    A stream worker's throughput is what it sustains while it has work; the first
    records of a fresh start and the drain of the last in-flight ones (a lognormal
    tail: one 20 s request) are one-time costs, excluded by the window.
    """
    times = sorted(arrivals)
    if len(times) < 10:
        return 0.0
    a, b = int(len(times) * lo), int(len(times) * hi) - 1
    span = times[b] - times[a]
    return (b - a) / span if span > 0 else 0.0


# -- processes --------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def child_env() -> dict[str, str]:
    """Environment of child processes: the repository importable, no stray overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNTH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


PROMPT = (
    "Rewrite the following passage as clear, factual prose for an encyclopedia. "
    "Keep every fact and add none.\n\nPassage:\n{document}"
)
SYSTEM_PROMPT = "You are an editor who writes plain, accurate text."


def worker_settings(
    *,
    bootstrap: str,
    base_url: str,
    group: str,
    concurrency: int,
    max_tokens: int,
    input_topic: str = "docs",
    output_topic: str = "out",
    dlq_topic: str = "dlq",
    prompt: str = PROMPT,
    system_prompt: str | None = SYSTEM_PROMPT,
    metrics_port: int = 0,
    extra_worker: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A worker configuration (as YAML would hold it) for one custom stage.

    Fixed concurrency (adaptive off) and no cache: the benchmarks measure the
    pipeline at a stated concurrency, and repeated documents must reach the LLM.
    """
    stage: dict[str, Any] = {
        "task": "custom",
        "name": "bench",
        "prompt": prompt,
        "output_field": "generated",
        "output_topic": output_topic,
        "generation": {"max_tokens": max_tokens, "temperature": 0.5, "top_p": 0.9},
    }
    if system_prompt:
        stage["system_prompt"] = system_prompt
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "input_topic": input_topic,
            "dlq_topic": dlq_topic,
            "auto_offset_reset": "earliest",
            # Tansu answers a JoinGroup after about half the session timeout: a shorter
            # one makes start-up and rebalances quicker (never inside a measured window).
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 500,
        },
        "llm": {
            "base_url": base_url,
            "model": "sim-model",
            "max_concurrency": concurrency,
            "min_concurrency": min(4, concurrency),
            "adaptive_concurrency": False,
            "timeout_s": 120.0,
            "cache": {"kind": "none"},
        },
        "stages": [stage],
        "worker": {"max_inflight_records": max(2_000, 4 * concurrency), **(extra_worker or {})},
        "metrics": {"enabled": metrics_port > 0, "port": metrics_port, "summary_interval_s": 0},
        "logging": {"level": "WARNING", "format": "text"},
    }


@dataclass
class WorkerProcess(harness.WorkerProcess):
    """The harness's worker process, run from the repository root so that a benchmark
    module given as ``module`` is importable in the child."""

    def __post_init__(self) -> None:
        self.cwd = self.cwd or REPO_ROOT
        self.env = self.env if self.env is not None else child_env()


produce = harness.produce
Watcher = harness.Watcher
committed_total = harness.committed_total
warm_up = harness.warm_up


def run_main(main: Callable[[], object]) -> NoReturn:
    """``python -m benchmarks.bench_X``: run ``main()`` as ``streamsynth bench`` does.

    SIGTERM (``timeout``) raises ``SystemExit(143)`` so the benchmark's cleanups run
    (brokers, simulators); otherwise a killed benchmark leaves them to the parent-death
    signal alone, and its temporary files behind.
    """
    with sigterm_exits():
        code = main()
    raise SystemExit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
