"""Stopping the child processes that ``streamsynth.local`` and the test harness start."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(
    proc: subprocess.Popen[Any] | None,
    *,
    timeout_s: float = 10.0,
    kill: bool = False,
    signum: int = signal.SIGTERM,
) -> int | None:
    """Send ``signum`` (SIGKILL with ``kill``), wait ``timeout_s``, then SIGKILL; the exit code.

    A process that has already exited is only reaped; None means there was no process.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signum)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode
