"""SIGUSR1: the worker logs where each of its asyncio tasks waits (``kafka.runtime``)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka_helpers import Topics, WorkerProcess, custom_stage, worker_config

from streamsynth.kafka import runtime
from streamsynth.kafka.runtime import DUMP_STACK_FRAMES, dump_tasks


async def _waits_here(event: asyncio.Event) -> None:
    await event.wait()


async def _one_level_up(event: asyncio.Event) -> None:
    await _waits_here(event)


async def _deep(event: asyncio.Event, depth: int) -> None:
    if depth:
        await _deep(event, depth - 1)
    else:
        await event.wait()


async def _many_alike(event: asyncio.Event) -> None:
    await event.wait()


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == runtime.LOGGER and r.levelno == logging.WARNING
    ]


async def test_each_task_is_one_line_with_where_it_waits_and_the_bound_cuts_the_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = asyncio.Event()
    nested = asyncio.create_task(_one_level_up(event), name="nested")
    deep = asyncio.create_task(_deep(event, 20), name="deep")
    alike = [asyncio.create_task(_many_alike(event)) for _ in range(30)]
    await asyncio.sleep(0)  # each task runs to its first await
    try:
        with caplog.at_level(logging.WARNING, logger=runtime.LOGGER):
            shown = dump_tasks(limit=10)
        lines = _messages(caplog)
        assert shown == 10 and len(lines) == 12  # the header, 10 tasks, what was left out
        assert lines[0] == "task dump: 33 tasks"  # these 32 and this test's own
        # The rare kinds first: the chain from the task's coroutine to its innermost await.
        assert re.fullmatch(
            r"task nested: kafka/test_task_dump\.py:\d+ _one_level_up > "
            r"kafka/test_task_dump\.py:\d+ _waits_here > asyncio/locks\.py:\d+ Event\.wait",
            next(line for line in lines if line.startswith("task nested:")),
        )
        deep_line = next(line for line in lines if line.startswith("task deep:"))
        where = deep_line.removeprefix("task deep: ").split(" > ")
        assert len(where) == DUMP_STACK_FRAMES + 1 and where[1] == "..."
        assert where[0].endswith(" _deep") and where[-1].endswith(" Event.wait")
        assert lines[-1] == "task dump: 23 more tasks left out (23 _many_alike)"
    finally:
        event.set()
        await asyncio.gather(nested, deep, *alike)


def test_sigusr1_before_the_loop_handlers_does_not_kill_the_process() -> None:
    # The default action of SIGUSR1 is to terminate: during the start-up imports (before
    # the loop's handler) an operator's dump request must not kill the worker.
    code = (
        "import os, signal\n"
        "from streamsynth.kafka.runtime import capture_early_signals\n"
        "capture_early_signals()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('alive')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "alive"), done.stderr


def test_a_running_worker_dumps_its_tasks_on_sigusr1_and_keeps_running(
    kafka_bootstrap: str, sim_url: str, tmp_path: Path
) -> None:
    topics = Topics.make(["summary"])
    asyncio.run(topics.create(kafka_bootstrap, partitions=1))
    cfg = worker_config(
        kafka_bootstrap, topics, sim_url, [custom_stage("summary", topics.outputs["summary"])]
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    try:
        worker.wait_for_log("partitions assigned", 60)
        worker.signal(signal.SIGUSR1)
        worker.wait_for_log(r"task dump: \d+ tasks", 20)
        lines = [json.loads(line) for line in worker.log_text().splitlines() if "task " in line]
        tasks = [line for line in lines if line["level"] == "WARNING" and "task" in line]
        probe = next(t for t in tasks if t["task"] == "streamsynth-llm-probe")
        assert re.search(r"kafka/runtime\.py:\d+ _watch_llm", probe["msg"])
        assert any("Worker.run" in t["msg"] for t in tasks)  # the worker's own task
        assert worker.alive()
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
