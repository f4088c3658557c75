"""External tools the tests need, found on PATH or provisioned into the user's cache.

``pytest -q`` on a fresh machine must run every test, so nothing here skips: a tool
is found, or fetched into ``~/.cache/streamsynth/tools`` (platformdirs' user cache
directory, ``$XDG_CACHE_HOME`` on Linux) without any system-wide install, or a
:class:`ToolUnavailable` says what is missing and how to get it.

* Prometheus and promtool: Debian's ``prometheus`` package, fetched with ``apt-get
  download`` and unpacked with ``dpkg -x`` (no root needed; when the machine's apt
  lists are empty, a private ``apt-get update`` fills lists under the cache directory).
* The Grafana dashboard type-check: ``npm install @grafana/schema typescript`` into the
  cache directory (needs ``npm``).

``python -m streamsynth.testing.tools`` provisions everything (``.ci/run`` calls it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from streamsynth.errors import StreamsynthError

#: The npm packages of the dashboard type-check, and the tsc they provide.
NPM_PACKAGES = ("@grafana/schema", "typescript")
_APT_TIMEOUT_S = 300
_NPM_TIMEOUT_S = 300


class ToolUnavailable(StreamsynthError, RuntimeError):
    """A tool the tests need is neither on PATH nor could be provisioned."""

    error_type = "tool_unavailable"


def tools_dir() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("streamsynth") / "tools"


def _run(cmd: Sequence[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolUnavailable(f"{cmd[0]} failed: {exc}") from None


# -- Prometheus ------------------------------------------------------------------------------


def _apt_private_options(cache: Path) -> list[str]:
    """apt options that keep lists and downloads under ``cache`` (usable without root)."""
    return [
        f"-o=Dir::State::Lists={cache / 'apt' / 'lists'}",
        f"-o=Dir::Cache={cache / 'apt' / 'cache'}",
        "-o=Debug::NoLocking=1",
    ]


def _apt_download(package: str, into: Path, cache: Path) -> Path:
    """The package's .deb in ``into``: from the machine's lists, else from private ones."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ToolUnavailable(
            f"{package} is not on PATH and this machine has no apt-get/dpkg to fetch it: "
            f"install {package} (https://prometheus.io/download/) and put it on PATH"
        )
    done = _run(["apt-get", "download", package], into, _APT_TIMEOUT_S)
    if done.returncode != 0:  # empty or stale lists: fetch ours, then retry with them
        options = _apt_private_options(cache)
        (cache / "apt" / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "apt" / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        update = _run(["apt-get", *options, "update"], into, _APT_TIMEOUT_S)
        done = _run(["apt-get", *options, "download", package], into, _APT_TIMEOUT_S)
        if done.returncode != 0:
            raise ToolUnavailable(
                f"apt-get download {package} failed: {done.stderr.strip()[-500:]} "
                f"(apt-get update: {update.stderr.strip()[-300:]})"
            )
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise ToolUnavailable(f"apt-get download {package} wrote no .deb file")
    return debs[-1]


def provision_prometheus(cache: Path | None = None) -> Path:
    """The directory holding ``prometheus`` and ``promtool`` from Debian's package,
    unpacked under the cache (fetched once; later calls reuse it)."""
    cache = cache or tools_dir()
    bindir = cache / "prometheus" / "usr" / "bin"
    if (bindir / "prometheus").is_file() and (bindir / "promtool").is_file():
        return bindir
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as tmp:
        deb = _apt_download("prometheus", Path(tmp), cache)
        unpacked = Path(tmp) / "root"
        done = _run(["dpkg", "-x", str(deb), str(unpacked)], Path(tmp), _APT_TIMEOUT_S)
        if done.returncode != 0:
            raise ToolUnavailable(f"dpkg -x {deb.name} failed: {done.stderr.strip()[-500:]}")
        target = cache / "prometheus"
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)  # whole, so a half-unpacked tree is never found
    if not (bindir / "prometheus").is_file() or not (bindir / "promtool").is_file():
        raise ToolUnavailable(f"Debian's prometheus package has no usr/bin/prometheus ({cache})")
    return bindir


def prometheus_bindir() -> Path:
    """Where ``prometheus`` and ``promtool`` are: PATH first, else the cache (provisioned)."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] and found[1] and Path(found[0]).parent == Path(found[1]).parent:
        return Path(found[0]).parent
    return provision_prometheus()


# -- npm packages for the dashboard type-check -------------------------------------------------


def provision_schema_packages(cache: Path | None = None) -> Path:
    """A directory with ``node_modules/@grafana/schema`` and typescript's ``tsc``; returns
    the path of ``tsc``. Installed with npm into the cache once."""
    directory = (cache or tools_dir()) / "grafana-schema"
    tsc = directory / "node_modules" / ".bin" / "tsc"
    if tsc.exists() and (directory / "node_modules" / "@grafana" / "schema").is_dir():
        return tsc
    npm = shutil.which("npm")
    if npm is None:
        raise ToolUnavailable(
            "npm is not on PATH: it installs @grafana/schema and typescript for the dashboard "
            "type-check (Debian: apt-get install npm; elsewhere: install Node.js)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(directory), *NPM_PACKAGES]
    done = _run(cmd, directory, _NPM_TIMEOUT_S)
    if done.returncode != 0 or not tsc.exists():
        raise ToolUnavailable(f"npm install {' '.join(NPM_PACKAGES)} failed: {done.stderr[-1500:]}")
    return tsc


def main() -> int:
    """Provision every tool; print where each is (for ``.ci/run``)."""
    try:
        print(f"prometheus, promtool: {prometheus_bindir()}")
        print(f"tsc with @grafana/schema: {provision_schema_packages()}")
    except ToolUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
