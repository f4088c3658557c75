"""Starting and stopping the child processes that ``streamsynth.local`` and the test
harness start.

A broker started for a benchmark or a test must not outlive the Python process that
started it. A context manager's cleanup does not run when that process is killed by
SIGTERM (Python's default action: die at once), as ``timeout`` does, so two guards:

- :func:`dies_with_parent`, a ``preexec_fn`` asking the kernel to send the child
  SIGTERM when its parent dies, however it dies (``PR_SET_PDEATHSIG``). Linux only;
  elsewhere (and when the child is started from a thread other than the main one,
  see the function) the child is not guarded and only the cleanups stop it;
- :func:`sigterm_exits`, for an entry point (``streamsynth bench``): SIGTERM raises
  :class:`SystemExit` in the main thread, so the cleanups (``with`` blocks,
  ``finally``) run as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: prctl(2) option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: Exit status of a process stopped by SIGTERM through :func:`sigterm_exits` (shells
#: report 128 + signal number for a process killed by one).
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved here: a ``preexec_fn`` should not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets SIGTERM when the
    calling process dies. None where that cannot be had (pass it on as is).

    Linux only. The kernel ties the signal to the *thread* that forked the child, so
    it is only asked for from the main thread: a child started from a worker thread
    would be killed when that thread ends, while its parent lives on.
    """
    prctl = _PRCTL
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM raises ``SystemExit(SIGTERM_EXIT_CODE)`` in the main thread
    (cleanups run); the previous handler comes back on leaving. A no-op off the main
    thread (Python runs signal handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(SIGTERM_EXIT_CODE)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


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
