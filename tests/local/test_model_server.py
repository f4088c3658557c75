"""The local model server (llama.cpp's server from the xllamacpp wheel) as the demo uses it:
real model, real HTTP on loopback, a real child process that is always stopped."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streamsynth.local.model_server import ModelServer, ModelUnavailable, find_gguf


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("model") / "model.log"
    srv = ModelServer(find_gguf(), parallel=4, ctx_per_slot=1024, log_path=log)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_serves_health_metrics_and_four_slots(server: ModelServer) -> None:
    root = server.base_url.removesuffix("/v1")
    assert root.startswith("http://127.0.0.1:")
    assert _get(root + "/health") == (200, '{"status":"ok"}')
    status, metrics = _get(root + "/metrics")
    assert status == 200 and "llamacpp:prompt_tokens_total" in metrics
    _, slots = _get(root + "/slots")
    assert len(json.loads(slots)) == 4


def test_answers_a_chat_completion_with_usage(server: ModelServer) -> None:
    body = {
        "model": server.alias,
        "messages": [{"role": "user", "content": "Say hello in three words."}],
        "max_tokens": 12,
    }
    request = urllib.request.Request(
        server.base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert answer["choices"][0]["message"]["content"].strip()
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 12
    assert "cached_tokens" in usage["prompt_tokens_details"]


def test_stop_ends_the_child_and_is_idempotent(tmp_path: Path) -> None:
    srv = ModelServer(find_gguf(), parallel=1, ctx_per_slot=512, log_path=tmp_path / "m.log")
    srv.start()
    pid = srv.pid
    assert pid is not None
    srv.stop()
    srv.stop()
    assert _gone(pid)


def test_a_broken_model_file_raises_and_leaves_nothing_running(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a model")
    srv = ModelServer(bogus, log_path=tmp_path / "m.log")
    with pytest.raises(ModelUnavailable, match="exited with code"):
        srv.start(timeout_s=60)
    assert srv.pid is None  # stopped and forgotten
    assert (tmp_path / "m.log").stat().st_size > 0  # the log says why
