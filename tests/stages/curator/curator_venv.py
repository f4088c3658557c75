"""The NeMo Curator 1.4.0 venv of the vs-curator benchmark, plus what the text stages import.

The benchmark's :func:`benchmarks.bench_vs_curator.ensure_venv` creates it once per
user (``~/.cache/streamsynth-bench/curator-venv``); the Nemotron-CC text stages also
import ``transformers`` (for the tokenizer type; no torch), added once on top and
marked, so neither CI nor a developer pays for it twice.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_vs_curator  # noqa: E402

EXTRA_DEPS = ("transformers",)
MARK = ".streamsynth-fidelity-ready"


def ensure_fidelity_venv(path: Path = bench_vs_curator.DEFAULT_VENV) -> Path:
    """The venv's python, with Curator, the benchmark's packages and :data:`EXTRA_DEPS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # One creator at a time (two test processes may start together).
    with (path.parent / f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = bench_vs_curator.ensure_venv(path)
        if not (path / MARK).is_file():
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run([*pip, *EXTRA_DEPS], check=True)
            (path / MARK).write_text(" ".join(EXTRA_DEPS) + "\n")
    return python
