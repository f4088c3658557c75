"""engine.loop.run / loop_factory: the event loop kind a process runs on."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from streamsynth.engine.loop import loop_factory, run
from streamsynth.errors import ConfigError


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_takes_uvloop_where_installed() -> None:
    assert issubclass(run(_loop_type(), kind="auto"), uvloop.Loop)
    assert issubclass(run(_loop_type(), kind="uvloop"), uvloop.Loop)


def test_asyncio_is_the_standard_loop() -> None:
    kind = run(_loop_type(), kind="asyncio")
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ConfigError, match=r"worker\.event_loop: uvloop is not installed"):
        loop_factory("uvloop")
