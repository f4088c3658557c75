"""Exactly-once on a broker that stops answering mid-stream (a real one, frozen).

The commit round's bound (``kafka.transaction_timeout_ms``) was tested on a fake
producer; here the broker itself is SIGSTOPped while the worker runs, so every
request of the round waits on a real, silent connection. The worker must say which
transaction it left unresolved and exit 1 within its bounds; once the broker is back,
the next worker's ``init_transactions`` settles that transaction, and a
read_committed reader finds every document exactly once.

The broker is this test's own noida-db (freezing the session's would stall the
other tests' clients); with ``KAFKA_BOOTSTRAP_SERVERS`` set there is none to freeze.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_eos_worker import (
    _check,
    _committed,
    _config,
    _finish,
    _in_flight,
    _read_all,
    _until_committed,
)

from streamsynth.kafka.exactly_once import UNRESOLVED_EXIT_CODE
from streamsynth.local.llm_simulator import SimulatorProcess
from streamsynth.local.noida import NoidaBroker
from streamsynth.testing.harness import Topics, WorkerProcess, doc, produce

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
        reason="needs a broker of its own to freeze (KAFKA_BOOTSTRAP_SERVERS is set)",
    ),
]

#: The first worker's round bound: short, so the test does not wait a minute for it,
#: yet far above what a healthy round takes on a loaded 2-core machine.
TXN_TIMEOUT_MS = 5_000


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NoidaBroker]:
    noida = NoidaBroker(log_path=tmp_path / "noida.log")
    noida.start()
    try:
        yield noida
    finally:
        proc = noida._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen process ignores SIGTERM until thawed
        noida.close()


def _freeze(noida: NoidaBroker, on: bool) -> None:
    proc = noida._proc
    assert proc is not None and proc.poll() is None, "the broker is not running"
    proc.send_signal(signal.SIGSTOP if on else signal.SIGCONT)


@pytest.mark.timeout(300)
async def test_a_broker_frozen_mid_stream_leaves_one_transaction_unresolved_and_no_duplicate(
    broker: NoidaBroker, eos_sim: SimulatorProcess, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    n = 3_000
    topics = Topics.make(["summary"])
    await topics.create(bootstrap)
    # At most ~320 documents/s (0.1 s answers, 32 in flight): mid-stream for seconds.
    await produce(
        bootstrap, topics.input, [doc(i, f"[[sim:latency=0.1]] doc {i}") for i in range(n)]
    )
    # The second worker: the same identity (so the same transactional ids), the default
    # bound (nothing is frozen then).
    cfg = _config(bootstrap, topics, eos_sim, "exactly_once", worker__shutdown_timeout_s=10)
    cfg["llm"]["max_concurrency"] = 32
    first_cfg = {**cfg, "kafka": {**cfg["kafka"], "transaction_timeout_ms": TXN_TIMEOUT_MS}}
    first = WorkerProcess(first_cfg, tmp_path, name="frozen-broker").start()
    try:
        await _until_committed(bootstrap, topics, n // 4, 60)
        await _in_flight(eos_sim)
        _freeze(broker, True)
        frozen_at = time.monotonic()
        try:
            # The round's bound, then the shutdown's, then the process's exit.
            code = await asyncio.to_thread(first.wait_exit, 60)
            took = time.monotonic() - frozen_at
        finally:
            _freeze(broker, False)
        log = first.log_text()
        assert code == UNRESOLVED_EXIT_CODE, f"exit {code}: {first.log_tail()}"
        assert "did not answer the transaction of" in log, first.log_tail()
        # The producers it abandoned are not reported again as leaked, at ERROR.
        assert "Unclosed AIOKafkaProducer" not in log
        print(f"frozen broker: exit {code} {took:.1f} s after the freeze")
    finally:
        first.stop()
    assert await _committed(bootstrap, topics) < n, "the freeze landed after the stream"
    await _finish(cfg, tmp_path, "after-the-thaw", topics, n, within_s=120, exit_s=30)
    _check(await _read_all(bootstrap, topics, n), n, "exactly_once")
