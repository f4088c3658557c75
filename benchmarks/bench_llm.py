"""llm: requests per second that one client process can push through an LLM client.

The simulator runs in a separate process at 0 ms latency, so what is measured is the
client side's CPU cost per request. Measured side by side, against the same
simulator, at the same concurrency and with the same prompts:

* ``resilient``: streamsynth's :class:`ResilientClient` over aiohttp, as the
  factory builds it (adaptive concurrency, retries, rate-limit learning, breaker,
  accounting; the response cache off, since every prompt differs);
* ``resilient+sqlite``: the same with the SQLite response cache on (all misses:
  each request is looked up and then stored);
* ``aiohttp``: the bare :class:`AiohttpChatClient` transport, no robustness layer;
* ``curator``: NeMo Curator 1.4.0's ``AsyncOpenAIClient.query_model`` (OpenAI SDK),
  run in its own virtual environment (``~/.cache/streamsynth-bench/curator-venv``,
  created on first use, reused after) with ``pip install --no-deps nemo-curator==1.4.0``
  plus the light packages its client module imports (openai, loguru). Its package
  ``__init__`` imports ``cosmos_xenna.ray_utils.cluster`` (which needs ray) only for
  one constant; that module is stubbed in ``sys.modules``, which does not touch the
  client code being measured.

Each run is bounded: ``--requests`` (default 20,000) or ``--seconds`` (default 30),
whichever comes first, after a short warm-up; ``--rounds`` (default 3) interleaved
rounds, the median reported (a shared 2-core machine is noisy). The target is 2,000 requests/s per
process; each figure is printed with its ratio to it. JSON goes to
``bench-results/llm.json``.

Run: ``python -m benchmarks.bench_llm [--requests N] [--seconds S] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from streamsynth.config import LLMSettings
from streamsynth.llm.client import AsyncLLMClient
from streamsynth.llm.factory import build_llm_client
from streamsynth.llm.transports.aiohttp import AiohttpChatClient
from streamsynth.llm.types import ChatRequest, GenerationConfig
from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig, SimulatorProcess

TARGET_RPS = 2000.0
MODEL = "sim-model"
MAX_TOKENS = 32
CURATOR_VERSION = "1.4.0"
VENV = Path.home() / ".cache" / "streamsynth-bench" / "curator-venv"
RESULTS = Path("bench-results") / "llm.json"
_WARMUP = 500

_CURATOR_SCRIPT = r"""
import asyncio, json, sys, time, types

# nemo_curator/__init__.py imports this module (it needs ray) for one constant only.
_stub = types.ModuleType("cosmos_xenna.ray_utils.cluster")
_stub.API_LIMIT = 10000
for _name in ("cosmos_xenna", "cosmos_xenna.ray_utils"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
sys.modules["cosmos_xenna.ray_utils.cluster"] = _stub

from nemo_curator.models.client.llm_client import GenerationConfig
from nemo_curator.models.client.openai_client import AsyncOpenAIClient

base_url, total, seconds, concurrency, warmup, max_tokens = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
    int(sys.argv[6]),
)
client = AsyncOpenAIClient(
    max_concurrent_requests=concurrency, max_retries=0, base_url=base_url, api_key="EMPTY"
)
client.setup()
config = GenerationConfig(max_tokens=max_tokens)


async def run(n, limit_s, tag):
    counter = iter(range(n))
    errors = 0
    start = time.perf_counter()
    stop_at = start + limit_s

    async def worker():
        nonlocal errors
        for i in counter:
            if time.perf_counter() > stop_at:
                return
            try:
                await client.query_model(
                    messages=[{"role": "user", "content": f"{tag} document number {i}"}],
                    model="sim-model",
                    generation_config=config,
                )
            except Exception:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, errors


async def main():
    await run(warmup, 30.0, "warmup")
    elapsed, errors = await run(total, seconds, "measure")
    print(json.dumps({"elapsed_s": elapsed, "errors": errors}))


asyncio.run(main())
"""


# -- our clients, measured in this process ------------------------------------------------


def _request(tag: str, i: int) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        messages=({"role": "user", "content": f"{tag} document number {i}"},),
        config=GenerationConfig(max_tokens=MAX_TOKENS),
        stage="bench",
    )


async def _drive(
    call: Callable[[ChatRequest], Awaitable[Any]],
    total: int,
    seconds: float,
    concurrency: int,
    tag: str,
) -> tuple[int, int, float]:
    """Run up to ``total`` requests with ``concurrency`` workers for at most ``seconds``."""
    counter = iter(range(total))
    done = errors = 0
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker() -> None:
        nonlocal done, errors
        for i in counter:
            if time.perf_counter() > stop_at:
                return
            try:
                await call(_request(tag, i))
                done += 1
            except Exception:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors, time.perf_counter() - start


async def _measure_client(
    client: AsyncLLMClient, total: int, seconds: float, concurrency: int
) -> dict[str, Any]:
    try:
        await _drive(client.chat, _WARMUP, 30.0, concurrency, "warmup")
        done, errors, elapsed = await _drive(client.chat, total, seconds, concurrency, "measure")
    finally:
        await client.aclose()
    return {"requests": done, "errors": errors, "elapsed_s": round(elapsed, 3)}


def _settings(base_url: str, concurrency: int, cache: dict[str, Any]) -> LLMSettings:
    return LLMSettings(base_url=base_url, model=MODEL, max_concurrency=concurrency, cache=cache)


def measure_ours(
    kind: str, base_url: str, total: int, seconds: float, concurrency: int, tmp: Path
) -> dict[str, Any]:
    client: AsyncLLMClient
    if kind == "aiohttp":
        client = AiohttpChatClient(base_url, max_connections=concurrency)
    elif kind == "resilient":
        client = build_llm_client(_settings(base_url, concurrency, {"kind": "none"}))
    else:
        # A new file per run: answers stored by an earlier run must not be hits.
        cache = {"kind": "sqlite", "path": str(tmp / f"cache-{time.time_ns()}.sqlite3")}
        client = build_llm_client(_settings(base_url, concurrency, cache))
    return asyncio.run(_measure_client(client, total, seconds, concurrency))


# -- NeMo Curator, measured in its own virtual environment --------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_curator_venv(venv: Path = VENV) -> Path:
    """Create (or reuse) the venv with nemo-curator (no deps) and its client's imports."""
    python = _venv_python(venv)
    if not python.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = "import importlib.metadata as m, openai, loguru; print(m.version('nemo-curator'))"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != CURATOR_VERSION:
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--no-deps", f"nemo-curator=={CURATOR_VERSION}"], check=True)
        subprocess.run([*pip, "openai", "loguru"], check=True)
    return python


def measure_curator(
    base_url: str, total: int, seconds: float, concurrency: int, tmp: Path
) -> dict[str, Any]:
    python = ensure_curator_venv()
    script = tmp / "curator_llm_bench.py"
    script.write_text(_CURATOR_SCRIPT)
    args = [str(python), str(script), base_url, str(total), str(seconds), str(concurrency)]
    args += [str(_WARMUP), str(MAX_TOKENS)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"curator benchmark failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- main -----------------------------------------------------------------------------


def _run_one(
    name: str, sim: SimulatorProcess, base_url: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    sim.reset_stats()
    if name == "curator":
        figures = measure_curator(base_url, args.requests, args.seconds, args.concurrency, tmp)
    else:
        figures = measure_ours(name, base_url, args.requests, args.seconds, args.concurrency, tmp)
    stats = sim.stats()
    # The server's count is the truth: warm-up included, so subtract it.
    served = stats.status_counts.get(200, 0) - _WARMUP
    if "requests" in figures and figures["requests"] != served:
        raise RuntimeError(f"{name}: client counted {figures['requests']}, server {served}")
    figures["requests"] = served
    rps = served / figures["elapsed_s"] if figures["elapsed_s"] > 0 else 0.0
    figures["requests_per_s"] = round(rps, 1)
    figures["ratio_to_target"] = round(rps / TARGET_RPS, 3)
    figures["server_max_inflight"] = stats.max_inflight
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clients",
        default="resilient,resilient+sqlite,aiohttp,curator",
        help="comma-separated subset of resilient, resilient+sqlite, aiohttp, curator",
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "target_requests_per_s": TARGET_RPS,
        "concurrency": args.concurrency,
        "max_tokens": MAX_TOKENS,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "clients": {},
    }
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    config = SimulatorConfig(latency=LatencyModel(kind="fixed", fixed_s=0.0))
    with SimulatorProcess(config) as sim, tempfile.TemporaryDirectory() as tmp_dir:
        # Rounds interleave the clients, so that noise from a shared machine spreads
        # over all of them; the median round is the figure reported.
        for round_ in range(args.rounds):
            for name in names:
                figures = _run_one(name, sim, sim.base_url, args, Path(tmp_dir))
                runs[name].append(figures)
                print(
                    f"round {round_ + 1}: {name:17s} {figures['requests_per_s']:9.1f} req/s "
                    f"({figures['requests']} requests in {figures['elapsed_s']:.2f} s, "
                    f"{figures['errors']} errors)",
                    flush=True,
                )
    print(f"\nrequests/s per process (median of {args.rounds}), target {TARGET_RPS:.0f}:")
    for name in names:
        rates = sorted(r["requests_per_s"] for r in runs[name])
        median = statistics.median(rates)
        results["clients"][name] = {
            "requests_per_s": median,
            "ratio_to_target": round(median / TARGET_RPS, 3),
            "min_requests_per_s": rates[0],
            "max_requests_per_s": rates[-1],
            "runs": runs[name],
        }
        print(f"  {name:17s} {median:9.1f} req/s  {median / TARGET_RPS:5.2f}x of target")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    from benchmarks._common import run_main

    run_main(main)
