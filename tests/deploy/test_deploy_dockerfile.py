"""Static checks of deploy/docker/Dockerfile (hadolint is not installable here).

The Dockerfile is parsed into instructions per stage; the checks are the ones a reviewer
would make: multi-stage on a slim Python base, an unprivileged numeric user, streamsynth
as the entrypoint, a /healthz HEALTHCHECK, and every copied path present in the build
context and not hidden by .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Instructions with continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            parts = args.split()
            image = _substitute(parts[0], global_args)
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            key, _, default = args.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def stage_args(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ARG"):
        key, _, default = args.partition("=")
        values[key] = default.strip('"')
    return values


def dockerignore_excludes(rel_path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a path is also hit through a parent."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        hit = any(
            fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, pat.removeprefix("**/"))
            for c in candidates
        ) or (pat.startswith("**/") and any(fnmatch.fnmatchcase(p, pat[3:]) for p in parts))
        if hit:
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_multi_stage_on_slim_python(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", stage.image), stage.image
    names = {s.name for s in stages}
    final = stages[-1]
    copies_from = [re.search(r"--from=(\S+)", a) for a in final.all("COPY")]
    sources = {m.group(1) for m in copies_from if m}
    assert sources, "the runtime stage should copy the built environment from a build stage"
    assert sources <= names, f"COPY --from names unknown stages: {sources - names}"


def test_runtime_runs_as_numeric_non_root_user(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = parsed
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    user = _substitute(users[-1], stage_args(final)).split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without a runAsUser.
    assert user.isdigit() and int(user) != 0, user
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_entrypoint_is_streamsynth_and_cmd_runs_the_worker(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = parsed
    final = stages[-1]
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])  # exec form: PID 1 gets SIGTERM
    assert entrypoint == ["streamsynth"]
    cmd = json.loads(final.all("CMD")[-1])
    assert cmd == ["run", "--config", "/etc/streamsynth/config.yaml"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "streamsynth" in scripts, "the entrypoint must be an installed console script"


def test_healthcheck_probes_healthz(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    checks = stages[-1].all("HEALTHCHECK")
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "CMD" in checks[0]
    assert "/readyz" not in checks[0], "health must not depend on the LLM or the broker"


def test_every_copied_path_exists_in_the_context(
    parsed: tuple[dict[str, str], list[Stage]], ignore_patterns: list[str]
) -> None:
    _, stages = parsed
    copied = 0
    for stage in stages:
        for args in stage.all("COPY") + stage.all("ADD"):
            if "--from=" in args:
                continue
            words = [w for w in args.split() if not w.startswith("--")]
            for src in words[:-1]:
                path = ROOT / src
                assert path.exists(), f"COPY source {src} is missing from the build context"
                assert not dockerignore_excludes(src, ignore_patterns), f"{src} is dockerignored"
                copied += 1
    assert copied >= 2


def test_only_runtime_dependencies_are_installed(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = parsed
    installs = [a for s in stages for a in s.all("RUN") if "pip install" in a]
    assert installs
    for command in installs:
        assert "--no-cache-dir" in command
        assert "[dev]" not in command and "-e " not in command
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "pytest" not in " ".join(project["dependencies"])


def test_dockerignore_keeps_the_context_small(ignore_patterns: list[str]) -> None:
    for path in (
        "tests/deploy/test_deploy_dockerfile.py",
        ".git/HEAD",
        "benchmarks/x.py",
        "streamsynth/__pycache__/config.cpython-311.pyc",
        ".venv/bin/python",
    ):
        assert dockerignore_excludes(path, ignore_patterns), path
    for path in ("pyproject.toml", "streamsynth/config.py"):
        assert not dockerignore_excludes(path, ignore_patterns), path
