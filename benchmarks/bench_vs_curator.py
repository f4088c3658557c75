"""vs-curator: streamsynth's worker against NeMo Curator 1.4.0's BaseSyntheticStage.

Both sides read the same documents from Kafka, call the same simulator (a separate
process; lognormal latency, median 0.5 s, p99 5 s; same seed, so the same sequence
of draws) at the same concurrency (256), and write their results back to Kafka.

* Curator: a consumer loop as one would write it around ``stage.process()``: consume
  up to B records (confluent-kafka, a synchronous client), build a ``DocumentBatch``,
  ``stage.process()``, produce the rows, flush, commit. Each batch waits for its
  slowest request, so throughput is about B / (slowest of B draws).
  Runs in its own virtual environment (default ``~/.cache/streamsynth-bench/curator-venv``,
  created on first use, reused after): ``pip install --no-deps nemo-curator==1.4.0``
  plus the light packages the stage and client modules import (pandas, pyarrow,
  openai, loguru, attrs) and confluent-kafka. No torch, ray or GPU packages. Two
  package-level imports are stubbed in ``sys.modules`` because they would pull in
  ray and are unrelated to the measured code (see :func:`_install_stubs`).
* streamsynth: the worker (``python -m streamsynth.kafka``) in a child process.
  Its throughput is the steady-state rate of a stream (the same document set
  replayed ``--passes`` times, a 10-90 % completion window); the end-to-end rate
  over the whole run is reported too.

Run: ``streamsynth bench vs-curator [--records N] [--batch-sizes 64,256,1024]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

CURATOR_VERSION = "1.4.0"
DEFAULT_VENV = Path.home() / ".cache" / "streamsynth-bench" / "curator-venv"
# What BaseSyntheticStage, DocumentBatch and AsyncOpenAIClient import, found by trying;
# confluent-kafka is the consumer loop's client.
CURATOR_DEPS = ("pandas", "pyarrow", "openai", "loguru", "attrs", "confluent-kafka")
READY_MARK = ".streamsynth-bench-ready"
GOAL_AT_256 = 8.0
STUBBED_MODULES = [
    "cosmos_xenna.ray_utils.cluster (API_LIMIT)",
    "nemo_curator.backends.base (WorkerMetadata)",
    "nemo_curator.backends.utils (worker-sizing checks)",
]

# -- child side: runs inside the Curator venv (stdlib, Curator, confluent-kafka only) ---


def _install_stubs() -> None:
    """Stub three imports that would pull in ray, outside the measured code path.

    * ``cosmos_xenna.ray_utils.cluster.API_LIMIT``: read by ``nemo_curator/__init__.py``
      only to set two Ray environment variables.
    * ``nemo_curator.backends.base.WorkerMetadata``: imported by the stage's module
      for the type annotation of ``setup()``; the real module imports ray via
      ``nemo_curator.core.utils``.
    * ``nemo_curator.backends.utils``: the stage metaclass calls two of its helpers
      after construction to reject conflicting Ray worker-sizing options; the
      stand-ins answer "none configured", which is what the real ones return for
      BaseSyntheticStage (empty ``ray_stage_spec()``, ``num_workers_per_node()`` None).
    """

    def stub(name: str, **attrs: Any) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module

    stub("cosmos_xenna")
    stub("cosmos_xenna.ray_utils")
    stub("cosmos_xenna.ray_utils.cluster", API_LIMIT=10_000)

    @dataclasses.dataclass
    class WorkerMetadata:
        worker_id: str = ""
        allocation: Any = None

    stub("nemo_curator.backends.base", WorkerMetadata=WorkerMetadata)
    stub(
        "nemo_curator.backends.utils",
        get_configured_actor_pool_sizing_keys=lambda spec: [],
        get_stage_num_workers_per_node=lambda stage: stage.num_workers_per_node(),
    )


def _curator_stage(cfg: dict[str, Any]) -> Any:
    from nemo_curator.models.client.llm_client import GenerationConfig
    from nemo_curator.models.client.openai_client import AsyncOpenAIClient
    from nemo_curator.stages.synthetic.nemotron_cc.base import BaseSyntheticStage

    client = AsyncOpenAIClient(
        max_concurrent_requests=cfg["concurrency"],
        max_retries=3,
        base_delay=1.0,
        base_url=cfg["base_url"],
        api_key="EMPTY",
        timeout=120,
    )
    stage = BaseSyntheticStage(
        system_prompt=cfg["system_prompt"],
        prompt=cfg["prompt"],
        input_field="text",
        output_field="generated",
        client=client,
        model_name="sim-model",
        generation_config=GenerationConfig(
            max_tokens=cfg["max_tokens"], temperature=0.5, top_p=0.9, seed=0
        ),
    )
    stage.setup()
    return stage


def _probe_reuse(cfg: dict[str, Any]) -> list[str]:
    """Three process() calls on one stage/client (4 rows, 0 ms: markers take no draw)."""
    import pandas as pd
    from nemo_curator.tasks import DocumentBatch

    stage = _curator_stage(cfg)
    outcomes = []
    for i in range(3):
        rows = [
            {"id": f"probe-{i}-{j}", "text": f"probe {i} {j} [[sim:latency=0]]"} for j in range(4)
        ]
        try:
            stage.process(DocumentBatch(dataset_name="probe", data=pd.DataFrame(rows)))
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}"[:120])
    return outcomes


def _curator_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """The consumer loop around ``stage.process()``; returns its measurements."""
    _install_stubs()
    import nemo_curator
    import openai
    import pandas as pd
    from confluent_kafka import Consumer, Producer
    from nemo_curator.tasks import DocumentBatch

    probe = _probe_reuse(cfg)
    fresh = cfg["client_mode"] == "fresh" or (
        cfg["client_mode"] == "auto" and any(o != "ok" for o in probe)
    )
    consumer = Consumer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "group.id": cfg["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Tansu answers a JoinGroup after about half the session timeout; librdkafka's
            # 45 s default would idle ~23 s before the first batch (not billed either way).
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([cfg["topic"]])
    producer = Producer({"bootstrap.servers": cfg["bootstrap"], "linger.ms": 5})
    stage: Any = None if fresh else _curator_stage(cfg)
    processed = failed = 0
    batch_s: list[float] = []
    t_start: float | None = None
    give_up = time.time() + cfg["deadline_s"]
    while processed < cfg["records"] and time.time() < give_up:
        t0 = time.time()
        msgs = [
            m
            for m in consumer.consume(num_messages=cfg["batch_size"], timeout=1.0)
            if not m.error()
        ]
        if not msgs:
            continue
        # The clock starts at the first batch: the group join is not billed to Curator.
        t_start = t_start or time.time()
        batch = DocumentBatch(
            dataset_name="bench", data=pd.DataFrame([json.loads(m.value() or b"{}") for m in msgs])
        )
        current = _curator_stage(cfg) if fresh else stage
        try:
            out = current.process(batch).to_pandas()
            for row in out.to_dict("records"):
                producer.produce(cfg["out_topic"], json.dumps(row).encode())
        except Exception:
            failed += len(msgs)  # BaseSyntheticStage loses the whole batch on one failure
        producer.flush()
        consumer.commit(asynchronous=False)
        processed += len(msgs)
        batch_s.append(time.time() - max(t0, t_start))
    t_end = time.time()
    consumer.close()
    elapsed = t_end - (t_start or t_end)
    return {
        "nemo_curator": nemo_curator.__version__,
        "openai": openai.__version__,
        "reuse_probe": probe,
        "fresh_stage_per_batch": fresh,
        "records": processed,
        "failed_records": failed,
        "batches": len(batch_s),
        "elapsed_s": elapsed,
        "records_per_s": (processed - failed) / elapsed if elapsed > 0 else 0.0,
        "batch_s": [round(b, 3) for b in batch_s],
    }


# -- parent side -----------------------------------------------------------------------


def ensure_venv(path: Path) -> Path:
    """The Curator venv's python; creates the venv once (reused when the mark exists)."""
    python = path / "bin" / "python"
    if (path / READY_MARK).is_file() and python.exists():
        return python
    print(f"creating NeMo Curator {CURATOR_VERSION} venv at {path} (first run only)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", f"nemo-curator=={CURATOR_VERSION}"], check=True)
    subprocess.run([*pip, *CURATOR_DEPS], check=True)
    (path / READY_MARK).write_text(" ".join(CURATOR_DEPS) + "\n")
    return python


def _sim_config(args: argparse.Namespace) -> Any:
    from streamsynth.local.llm_simulator import LatencyModel, SimulatorConfig

    latency = LatencyModel("lognormal", median_s=args.median_s, p99_s=args.p99_s)
    return SimulatorConfig(latency=latency, seed=args.seed)


async def run_curator(
    args: argparse.Namespace, python: Path, docs: list[dict[str, str]], batch_size: int
) -> dict[str, Any]:
    """One Curator loop at ``batch_size`` against a fresh broker topic and simulator."""
    from benchmarks import _common as c
    from streamsynth.local.broker import EmbeddedBroker, create_topics
    from streamsynth.local.llm_simulator import SimulatorProcess

    script = str(Path(__file__).resolve())  # noqa: ASYNC240  (no I/O: a path computation)
    with EmbeddedBroker() as broker, SimulatorProcess(_sim_config(args)) as sim:
        boot = broker.bootstrap_servers
        await create_topics(boot, {"docs": args.partitions, "out": args.partitions})
        await c.produce(boot, "docs", docs, partitions=args.partitions)
        cfg = {
            "bootstrap": boot,
            "topic": "docs",
            "out_topic": "out",
            "group": f"curator-{batch_size}",
            "base_url": sim.base_url,
            "batch_size": batch_size,
            "records": len(docs),
            "concurrency": args.concurrency,
            "prompt": c.PROMPT,
            "system_prompt": c.SYSTEM_PROMPT,
            "max_tokens": args.max_tokens,
            "client_mode": args.curator_client,
            "deadline_s": args.curator_max_s,
        }
        done = await asyncio.to_thread(
            subprocess.run,
            [str(python), script, "--curator-child", json.dumps(cfg)],
            capture_output=True,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"Curator child failed:\n{done.stderr.decode()[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        result["simulator_max_inflight"] = sim.stats().max_inflight
        return result


async def run_streamsynth(args: argparse.Namespace, docs: list[dict[str, str]]) -> dict[str, Any]:
    """The worker over the document set replayed ``passes`` times."""
    from benchmarks import _common as c
    from streamsynth.local.broker import EmbeddedBroker, create_topics, free_port
    from streamsynth.local.llm_simulator import SimulatorProcess

    stream = [
        {"id": f"{d['id']}-p{p}", "text": d["text"]} for p in range(args.passes) for d in docs
    ]
    with EmbeddedBroker() as broker, SimulatorProcess(_sim_config(args)) as sim:
        boot = broker.bootstrap_servers
        await create_topics(boot, {"docs": args.partitions, "out": args.partitions, "dlq": 1})
        watcher = c.Watcher(boot, "out", "dlq")
        await watcher.start()
        settings = c.worker_settings(
            bootstrap=boot,
            base_url=sim.base_url,
            group="streamsynth",
            concurrency=args.concurrency,
            max_tokens=args.max_tokens,
            metrics_port=free_port(),
        )
        worker = c.WorkerProcess(settings)
        worker.start()
        try:
            # Warm-up records ask for 0 ms by marker: no latency draw is consumed.
            await c.warm_up(
                boot, "docs", watcher, partitions=args.partitions, text="warm up [[sim:latency=0]]"
            )
            sim.reset_stats()
            t0 = time.time()
            await c.produce(boot, "docs", stream, partitions=args.partitions)
            complete = await watcher.wait_for(len(stream), timeout_s=args.streamsynth_max_s)
            if not complete:
                print(f"streamsynth: timed out\n{worker.log_tail()}", file=sys.stderr)
            stats = sim.stats()
        finally:
            code = worker.stop()
            await watcher.stop()
        elapsed = max(watcher.arrivals, default=t0) - t0
        return {
            "records": len(stream),
            "completed": watcher.done,
            "dlq": watcher.dlq,
            "passes": args.passes,
            "elapsed_s": elapsed,
            "records_per_s_end_to_end": len(watcher.arrivals) / elapsed if elapsed > 0 else 0.0,
            "records_per_s_steady": c.steady_rate(watcher.arrivals),
            "simulator_max_inflight": stats.max_inflight,
            "simulator_requests": stats.requests,
            "worker_exit_code": code,
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsynth bench vs-curator", description=__doc__)
    p.add_argument("--records", type=int, default=2048, help="documents in the set (default 2048)")
    p.add_argument("--batch-sizes", default="64,256,1024", help="Curator micro-batch sizes")
    p.add_argument("--passes", type=int, default=6, help="streamsynth: replays of the set")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--median-s", type=float, default=0.5)
    p.add_argument("--p99-s", type=float, default=5.0)
    p.add_argument("--words", type=int, default=100, help="mean words per document")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curator-client", choices=("auto", "fresh", "reuse"), default="auto")
    p.add_argument("--curator-max-s", type=float, default=200.0, help="per batch size")
    p.add_argument("--streamsynth-max-s", type=float, default=180.0)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--out-dir", type=Path, default=None)
    return p


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import _common as c

    python = await asyncio.to_thread(ensure_venv, args.venv)
    docs = c.make_documents(args.records, seed=args.seed, mean_words=args.words)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    curator = {}
    for size in sizes:
        curator[str(size)] = await run_curator(args, python, docs, size)
        print(f"curator B={size}: {curator[str(size)]['records_per_s']:.1f} records/s", flush=True)
    ours = await run_streamsynth(args, docs)
    return {"curator": curator, "streamsynth": ours, "batch_sizes": sizes}


def report(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, Any]:
    from benchmarks import _common as c

    ours = res["streamsynth"]
    rows, ratios = [], {}
    for size in res["batch_sizes"]:
        cur = res["curator"][str(size)]
        ratio = ours["records_per_s_steady"] / cur["records_per_s"] if cur["records_per_s"] else 0.0
        ratio_e2e = (
            ours["records_per_s_end_to_end"] / cur["records_per_s"] if cur["records_per_s"] else 0.0
        )
        ratios[str(size)] = {"steady": ratio, "end_to_end": ratio_e2e}
        rows.append(
            [
                f"B={size}",
                cur["records"],
                cur["failed_records"],
                cur["records_per_s"],
                ours["records_per_s_steady"],
                ours["records_per_s_end_to_end"],
                ratio,
                ratio_e2e,
            ]
        )
    first = res["curator"][str(res["batch_sizes"][0])]
    at_256 = ratios.get("256", {}).get("steady")
    notes = [
        f"Same {args.records} documents, simulator (lognormal median {args.median_s} s, "
        f"p99 {args.p99_s} s, seed {args.seed}, separate process), concurrency "
        f"{args.concurrency}; each run starts a fresh broker and simulator.",
        f"Curator {first['nemo_curator']} (openai {first['openai']}): consume B -> "
        "DocumentBatch -> process() -> produce -> commit; stage/client "
        + (
            "fresh per batch (a reused one failed: " + "; ".join(first["reuse_probe"]) + ")"
            if first["fresh_stage_per_batch"]
            else "reused (probe: " + ", ".join(first["reuse_probe"]) + ")"
        ),
        f"streamsynth: worker subprocess; the set replayed {ours['passes']}x "
        f"({ours['records']} records); 'steady' = 10-90 % completion window, "
        f"'e2e' = whole run incl. the final drain ({ours['elapsed_s']:.1f} s).",
        f"Goal: >= {GOAL_AT_256:.0f}x at B=256 (steady): "
        + ("n/a" if at_256 is None else ("MET" if at_256 >= GOAL_AT_256 else "NOT MET")),
    ]
    c.print_table(
        "vs-curator: records/s, streamsynth vs NeMo Curator BaseSyntheticStage",
        [
            "Curator batch",
            "records",
            "failed",
            "Curator rec/s",
            "ours steady",
            "ours e2e",
            "ratio steady",
            "ratio e2e",
        ],
        rows,
        notes,
    )
    return {"ratios": ratios, "goal_at_256": GOAL_AT_256, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import _common as c

    args = build_parser().parse_args(argv)
    res = asyncio.run(_run(args))
    summary = report(args, res)
    setup = {
        "venv": str(args.venv),
        "installed": [f"nemo-curator=={CURATOR_VERSION} (--no-deps)", *CURATOR_DEPS],
        "stubbed_modules": STUBBED_MODULES,
    }
    c.save_result("vs-curator", args, {"curator_setup": setup, **res, **summary})
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--curator-child":
        print(json.dumps(_curator_child(json.loads(sys.argv[2]))), flush=True)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks._common import run_main

        run_main(main)
