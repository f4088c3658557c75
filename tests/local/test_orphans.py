"""A broker started for a benchmark or a test never outlives the process that started it.

SIGTERM (``timeout``'s signal) kills Python at once, without running a ``with``
block's cleanup: the brokers are guarded by a parent-death signal, and
``streamsynth bench`` turns SIGTERM into a normal exit (see ``local.process``).
"""

from __future__ import annotations

import ast
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamsynth.local.process import SIGTERM_EXIT_CODE, stop_process

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only"
)

#: How long a child may take to start its broker, and a dead broker to be reported gone.
START_S = 60.0
GONE_S = 15.0

#: The child: opens a broker, prints its pid, then waits to be killed (never cleans up).
CHILD = """
import threading
from streamsynth.local.{module} import {cls}
with {cls}() as broker:
    print(broker._proc.pid, flush=True)
    threading.Event().wait()
"""


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else ""


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    """A pidfd of ``pid``: readable once it exits (a zombie no one reaps included)."""
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def _exits_within(pidfd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([pidfd], [], [], timeout_s)
    return bool(ready)


def _kill(pidfd: int) -> None:
    """SIGKILL what the pidfd names (never another process reusing its pid)."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


@pytest.mark.parametrize(
    ("module", "cls"), [("broker", "EmbeddedBroker"), ("noida", "NoidaBroker")]
)
def test_a_broker_dies_with_its_sigtermed_parent(module: str, cls: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(module=module, cls=cls)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(child, START_S)
        assert line.isdigit(), f"the child did not report its broker's pid: {line!r}"
        with _pidfd(int(line)) as broker:
            try:
                assert not _exits_within(broker, 0)  # it runs
                child.send_signal(signal.SIGTERM)
                # Python's default action: died at once, its `with` cleanup never ran.
                assert child.wait(timeout=GONE_S) == -signal.SIGTERM
                assert _exits_within(broker, GONE_S), f"{cls} outlived its parent"
            finally:
                _kill(broker)
    finally:
        stop_process(child, kill=True)
        if child.stdout is not None:
            child.stdout.close()


#: A benchmark's main: waits to be killed, and marks the cleanup it ran.
WAITING_MAIN = """
import threading
from pathlib import Path

def main() -> int:
    try:
        print("running", flush=True)
        threading.Event().wait()
    finally:
        Path({marker!r}).write_text("yes")
    return 0
"""

REPO = Path(__file__).resolve().parents[2]


def _sigterm_runs_cleanups(argv: list[str], cwd: Path, marker: Path) -> None:
    """Start ``argv``, SIGTERM it once it runs: it exits 143 with its cleanup done."""
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        assert _read_line(child, START_S) == "running"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=GONE_S) == SIGTERM_EXIT_CODE
        assert marker.read_text() == "yes"
    finally:
        stop_process(child, kill=True)
        if child.stdout is not None:
            child.stdout.close()


def test_streamsynth_bench_runs_the_benchmarks_cleanups_on_sigterm(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "__init__.py").write_text("")
    marker = tmp_path / "cleaned-up"
    (bench / "bench_waits.py").write_text(WAITING_MAIN.format(marker=str(marker)))
    argv = [sys.executable, "-m", "streamsynth.cli.main", "bench", "waits"]
    _sigterm_runs_cleanups(argv, tmp_path, marker)


def test_a_benchmark_run_as_a_module_runs_its_cleanups_on_sigterm(tmp_path: Path) -> None:
    # As ``python -m benchmarks.bench_X`` runs it: the repository's run_main around main.
    marker = tmp_path / "cleaned-up"
    script = WAITING_MAIN.format(marker=str(marker)) + (
        "from benchmarks._common import run_main\nrun_main(main)\n"
    )
    _sigterm_runs_cleanups([sys.executable, "-c", script], REPO, marker)


def _main_block_calls(path: Path) -> set[str]:
    """The names called anywhere in ``path``'s ``if __name__ == "__main__":`` blocks."""
    called: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and ast.unparse(test) == "__name__ == '__main__'":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Call):
                    called.add(ast.unparse(sub.func).rpartition(".")[2])
    return called


@pytest.mark.parametrize(
    "path", sorted((REPO / "benchmarks").glob("bench_*.py")), ids=lambda p: p.name
)
def test_every_benchmark_module_runs_its_main_through_run_main(path: Path) -> None:
    assert "run_main" in _main_block_calls(path)
