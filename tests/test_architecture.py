"""The layering rules of ARCHITECTURE.md, read from the source (``ast``), not from prose.

1. ``engine``, ``llm``, ``stages`` and ``kafka`` never import ``streamsynth.local``,
   ``streamsynth.testing`` or ``streamsynth.cli`` (not even lazily, inside a function).
2. ``llm`` never imports ``streamsynth.config`` at run time; an import under
   ``if TYPE_CHECKING:`` is only for the type checker and is allowed.
3. aiokafka's clients (``AIOKafkaConsumer``, ``AIOKafkaProducer``,
   ``AIOKafkaAdminClient``) are constructed only in ``streamsynth/kafka/connection.py``,
   across the package, the benchmarks and the tests: everything else asks a
   ``KafkaConnection``, so security settings reach every client.

Each checker is also run on a small snippet that breaks the rule, so a checker that
stopped seeing violations would fail here too.
"""

from __future__ import annotations

import ast
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "streamsynth"
CORE = ("engine", "llm", "stages", "kafka")
FORBIDDEN_IN_CORE = ("streamsynth.local", "streamsynth.testing", "streamsynth.cli")
CLIENT_CLASSES = frozenset({"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"})
CLIENT_FACTORY = PACKAGE / "kafka" / "connection.py"


@dataclass(frozen=True)
class Import:
    module: str
    line: int
    type_checking: bool  # only under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def parse(source: str) -> ast.Module:
    """``ast.parse`` with the cyclic collector off while it runs.

    CPython 3.11 keeps the AST converter's recursion count per interpreter, and a
    finalizer run by a collection in the middle of it (an unread asyncio future from an
    earlier test, logging its traceback, which 3.11 formats with ``ast.parse``) resets
    that count: the outer parse then fails with "SystemError: AST constructor
    recursion depth mismatch".
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if enabled:
            gc.enable()


def imports(source: str, name: str, *, is_package: bool = False) -> Iterator[Import]:
    """Every module ``source`` imports: statements (anywhere) and import_module("...")."""
    package = name if is_package else name.rpartition(".")[0]

    def walk(node: ast.AST, guarded: bool) -> Iterator[Import]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from walk(child, True)
            for child in node.orelse:
                yield from walk(child, guarded)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, guarded)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            yield Import(base, node.lineno, guarded)
            for alias in node.names:  # ``from streamsynth import local`` imports a module
                yield Import(f"{base}.{alias.name}", node.lineno, guarded)
        elif isinstance(node, ast.Call) and _call_name(node.func) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield Import(arg.value, node.lineno, guarded)
        for sub in ast.iter_child_nodes(node):
            yield from walk(sub, guarded)

    yield from walk(parse(source), False)


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def client_constructions(source: str) -> Iterator[tuple[str, int]]:
    """Calls that construct an aiokafka client, by name, attribute or import alias."""
    tree = parse(source)
    aliases = {name: name for name in CLIENT_CLASSES}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in CLIENT_CLASSES:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = _call_name(node.func)
            if called in aliases:
                yield aliases[called], node.lineno


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _package_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path


def _violations_core(name: str, source: str, is_package: bool) -> list[str]:
    return [
        f"{name}:{imp.line} imports {imp.module}"
        for imp in imports(source, name, is_package=is_package)
        if _under(imp.module, FORBIDDEN_IN_CORE)
    ]


def _violations_llm_config(name: str, source: str, is_package: bool) -> list[str]:
    return [
        f"{name}:{imp.line} imports {imp.module} at run time"
        for imp in imports(source, name, is_package=is_package)
        if _under(imp.module, ("streamsynth.config",)) and not imp.type_checking
    ]


# -- the rules, on the tree ---------------------------------------------------------------
@pytest.mark.parametrize("room", CORE)
def test_core_rooms_never_import_local_testing_or_cli(room: str) -> None:
    found = []
    for name, path in _package_modules():
        if _under(name, (f"streamsynth.{room}",)):
            found += _violations_core(name, path.read_text(), path.name == "__init__.py")
    assert found == [], "\n".join(found)


def test_llm_never_imports_config_at_run_time() -> None:
    found = []
    for name, path in _package_modules():
        if _under(name, ("streamsynth.llm",)):
            found += _violations_llm_config(name, path.read_text(), path.name == "__init__.py")
    assert found == [], "\n".join(found)


def test_aiokafka_clients_are_built_only_by_kafka_connection() -> None:
    found = []
    for folder in ("streamsynth", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == CLIENT_FACTORY:
                continue
            for cls, line in client_constructions(path.read_text()):
                found.append(f"{path.relative_to(ROOT)}:{line} constructs {cls}")
    assert found == [], "use streamsynth.kafka.connection.KafkaConnection:\n" + "\n".join(found)


def test_the_connection_module_does_build_the_clients() -> None:
    built = {cls for cls, _ in client_constructions(CLIENT_FACTORY.read_text())}
    assert built == CLIENT_CLASSES


# -- the checkers see what they must ------------------------------------------------------
SNIPPET = """
from __future__ import annotations
import typing
from typing import TYPE_CHECKING
import importlib
from aiokafka import AIOKafkaConsumer as Consumer
import aiokafka
from .. import config
if TYPE_CHECKING:
    from streamsynth.config import Settings
    from streamsynth.cli import main
else:
    from streamsynth.testing import harness
if typing.TYPE_CHECKING:
    import streamsynth.config

def later():
    from streamsynth import local
    importlib.import_module("streamsynth.cli.demo")
    Consumer(bootstrap_servers="x")
    aiokafka.AIOKafkaProducer()
"""


def test_checkers_find_violations_in_a_snippet() -> None:
    core = _violations_core("streamsynth.llm.bad", SNIPPET, False)
    assert [v.split(" imports ")[1] for v in core] == [
        "streamsynth.cli", "streamsynth.cli.main", "streamsynth.testing",
        "streamsynth.testing.harness", "streamsynth.local", "streamsynth.cli.demo",
    ]  # fmt: skip
    # ``from .. import config`` in streamsynth.llm.bad is streamsynth.config, at run time;
    # the two TYPE_CHECKING imports are not reported.
    runtime = _violations_llm_config("streamsynth.llm.bad", SNIPPET, False)
    assert [v.split(":")[1].split()[0] for v in runtime] == ["8"]
    assert sorted(client_constructions(SNIPPET)) == [
        ("AIOKafkaConsumer", 20), ("AIOKafkaProducer", 21)
    ]  # fmt: skip
