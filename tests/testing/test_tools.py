"""The test tools are found on PATH or provisioned into the user cache, never skipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from streamsynth.testing import tools


def test_prometheus_is_provisioned_into_the_user_cache_without_a_system_install() -> None:
    # Whatever PATH holds, provisioning unpacks Debian's package under the user cache
    # (downloaded once; a later run reuses it).
    bindir = tools.provision_prometheus()
    assert bindir.is_relative_to(tools.tools_dir())
    for name in ("prometheus", "promtool"):
        done = subprocess.run(
            [str(bindir / name), "--version"], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0 and "version" in done.stdout + done.stderr, name


def test_tools_dir_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tools.tools_dir() == tmp_path / "streamsynth" / "tools"


def test_without_apt_the_failure_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(tools.ToolUnavailable, match=r"no apt-get/dpkg.*install prometheus"):
        tools.provision_prometheus(tmp_path)
    assert not (tmp_path / "prometheus").exists()


def test_without_npm_the_failure_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(tools.ToolUnavailable, match=r"npm is not on PATH.*apt-get install npm"):
        tools.provision_schema_packages(tmp_path)


def test_a_provisioned_schema_dir_is_reused(tmp_path: Path) -> None:
    # What a finished npm install leaves: reused as it is, npm is not run again.
    tsc = tmp_path / "grafana-schema" / "node_modules" / ".bin" / "tsc"
    tsc.parent.mkdir(parents=True)
    tsc.write_text("#!/bin/sh\n")
    (tmp_path / "grafana-schema" / "node_modules" / "@grafana" / "schema").mkdir(parents=True)
    assert tools.provision_schema_packages(tmp_path) == tsc
