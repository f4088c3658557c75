"""Stage graphs: route records to stages by their fields, chain stages on each other's rows.

A graph is a set of named stages. A stage may have

* ``when``: field -> condition (``eq ne gt gte lt lte in not_in exists``), all of which
  must hold on the row the stage would receive, else the row is *skipped* for it;
* ``input_from``: the name of another stage; it then runs on every output row of that
  stage (one row per kept segment for segmented tasks) instead of on the input record.

Every stage reads at most one upstream (no fan-in) and the graph has no cycle; both
are checked by :meth:`StageGraph.build`, which names the offending field.

This module is pure: it knows nothing of Kafka or of the LLM. :func:`evaluate` drives
one record through the graph with a caller-supplied ``run`` function and returns
every stage run (or skip) with its lineage; the Kafka worker turns them into
messages, the batch :class:`~streamsynth.engine.pipeline.Pipeline` into rows.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from streamsynth.engine.errors import EngineError
from streamsynth.engine.stage import RecordOutcome

#: The condition operators of ``when``, in the order the error messages list them.
OPERATORS: Final = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists")

_MISSING: Final = object()


class GraphError(EngineError):
    """A stage graph is invalid. ``path`` names the field, e.g. ``stages.2.input_from``."""

    error_type = "graph"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# -- conditions ------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but true/false is no number a threshold should compare with.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_kind(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` can be ordered: two numbers or two strings."""
    if _is_number(a):
        return _is_number(b)
    return isinstance(a, str) and isinstance(b, str)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and "1" != 1."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return type(a) is type(b) and bool(a == b)


_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on one field of a row."""

    field: str
    op: str
    value: Any

    def holds(self, row: Mapping[str, Any]) -> bool:
        """True when the condition holds; a missing or ill-typed field is a miss, never a crash."""
        actual = row.get(self.field, _MISSING)
        op = self.op
        if op == "exists":
            return (actual is not _MISSING) is self.value
        if actual is _MISSING:
            return False
        if op == "eq":
            return _equal(actual, self.value)
        if op == "ne":
            return not _equal(actual, self.value)
        if op == "in":
            return any(_equal(actual, v) for v in self.value)
        if op == "not_in":
            return not any(_equal(actual, v) for v in self.value)
        if not _same_kind(actual, self.value):
            return False
        if isinstance(actual, float) and math.isnan(actual):
            return False
        return _ORDER[op](actual, self.value)


@dataclass(frozen=True, slots=True)
class When:
    """All the conditions of a stage; an empty ``When`` matches every row."""

    conditions: tuple[Condition, ...] = ()

    def matches(self, row: Mapping[str, Any]) -> bool:
        return all(c.holds(row) for c in self.conditions)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _check_value(path: str, op: str, value: Any) -> None:
    if op == "exists":
        if not isinstance(value, bool):
            raise GraphError(path, f"'exists' takes true or false, not {_kind(value)}")
    elif op in ("in", "not_in"):
        if not isinstance(value, list | tuple) or not all(_scalar(v) for v in value):
            raise GraphError(path, f"{op!r} takes a list of values, not {_kind(value)}")
    elif op in _ORDER:
        if not (_is_number(value) or isinstance(value, str)):
            raise GraphError(path, f"{op!r} takes a number or a string, not {_kind(value)}")
        if isinstance(value, float) and math.isnan(value):
            raise GraphError(path, f"{op!r} cannot compare with NaN")
    elif not _scalar(value):
        raise GraphError(
            path, f"{op!r} takes a number, string, boolean or null, not {_kind(value)}"
        )


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return names.get(type(value), type(value).__name__)


def parse_when(raw: Mapping[str, Any] | When | None, path: str = "when") -> When:
    """Validate a ``when`` mapping (field -> {operator: value}); errors name ``path.field.op``."""
    if raw is None:
        return When()
    if isinstance(raw, When):
        return raw
    if not isinstance(raw, Mapping):
        raise GraphError(path, f"must be a mapping of field -> condition, not {_kind(raw)}")
    conditions: list[Condition] = []
    for name, spec in raw.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name:
            raise GraphError(where, "a field name must be a non-empty string")
        if not isinstance(spec, Mapping) or not spec:
            raise GraphError(
                where, f"must be a mapping of operator -> value (one of {', '.join(OPERATORS)})"
            )
        for op, value in spec.items():
            if op not in OPERATORS:
                raise GraphError(
                    f"{where}.{op}",
                    f"unknown condition operator; use one of {', '.join(OPERATORS)}",
                )
            _check_value(f"{where}.{op}", op, value)
            if op in ("in", "not_in"):
                value = tuple(value)
            conditions.append(Condition(name, op, value))
    return When(tuple(conditions))


# -- the graph -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphNode:
    """A stage's place in the graph. ``path`` prefixes its error messages (``stages.2``)."""

    name: str
    when: Mapping[str, Any] | When | None = None
    input_from: str | Sequence[str] | None = None
    path: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    """A validated node."""

    name: str
    when: When
    input_from: str | None
    children: tuple[str, ...]


@dataclass(frozen=True)
class StageGraph:
    """A validated graph; ``order`` is topological (an upstream before its readers)."""

    nodes: Mapping[str, Node]
    order: tuple[str, ...]
    roots: tuple[str, ...]

    @classmethod
    def build(cls, specs: Sequence[GraphNode]) -> StageGraph:
        """Validate ``specs``: unique names, known upstreams, no fan-in, no cycle."""
        paths = {}
        for i, spec in enumerate(specs):
            prefix = spec.path or f"stages.{i}"
            if spec.name in paths:
                raise GraphError(f"{prefix}.name", f"two stages are named {spec.name!r}")
            paths[spec.name] = prefix
        whens: dict[str, When] = {}
        upstream: dict[str, str | None] = {}
        for spec in specs:
            prefix = paths[spec.name]
            whens[spec.name] = parse_when(spec.when, f"{prefix}.when")
            upstream[spec.name] = _check_upstream(spec, prefix, paths)
        _check_acyclic(upstream, paths)
        children: dict[str, list[str]] = {spec.name: [] for spec in specs}
        for spec in specs:
            parent = upstream[spec.name]
            if parent is not None:
                children[parent].append(spec.name)
        nodes = {
            s.name: Node(s.name, whens[s.name], upstream[s.name], tuple(children[s.name]))
            for s in specs
        }
        roots = tuple(s.name for s in specs if upstream[s.name] is None)
        order: list[str] = []
        frontier = list(roots)
        while frontier:  # breadth first: config order within each level
            order.extend(frontier)
            frontier = [c for name in frontier for c in nodes[name].children]
        return cls(nodes, tuple(order), roots)

    @classmethod
    def flat(cls, names: Sequence[str]) -> StageGraph:
        """Every stage on every record, side by side: the graph of a config without keys."""
        return cls.build([GraphNode(n) for n in names])

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def is_flat(self) -> bool:
        """No routing and no chaining: every stage runs on every record."""
        return all(not n.when.conditions and n.input_from is None for n in self.nodes.values())

    def upstream_of(self, name: str) -> str | None:
        return self.nodes[name].input_from


def _check_upstream(spec: GraphNode, prefix: str, paths: Mapping[str, str]) -> str | None:
    raw = spec.input_from
    where = f"{prefix}.input_from"
    if raw is None:
        return None
    if not isinstance(raw, str):
        names = list(raw)
        if len(names) != 1:
            raise GraphError(
                where, "a stage reads exactly one upstream stage; fan-in is not supported"
            )
        raw = names[0]
    if raw == spec.name:
        raise GraphError(where, f"stage {spec.name!r} cannot read its own output")
    if raw not in paths:
        known = ", ".join(sorted(paths)) or "none"
        raise GraphError(where, f"no stage is named {raw!r} (stages: {known})")
    return raw


def _check_acyclic(upstream: Mapping[str, str | None], paths: Mapping[str, str]) -> None:
    # One upstream per stage: following input_from from any stage either ends or loops.
    for start in upstream:
        seen = [start]
        current = upstream[start]
        while current is not None:
            if current == start:
                cycle = " -> ".join([*seen, start])
                raise GraphError(f"{paths[start]}.input_from", f"cycle: {cycle}")
            if current in seen:
                break  # a loop that does not pass through start: reported from its own stage
            seen.append(current)
            current = upstream[current]


# -- evaluation ------------------------------------------------------------------------


@dataclass(slots=True)
class StageRun:
    """One stage on one row it received: its outcome, or ``skipped`` by its ``when``.

    ``parent`` is the run of the upstream stage whose output row ``parent_index`` this
    run received (None for a stage that read the input record).
    """

    stage: str
    row: Mapping[str, Any]
    outcome: RecordOutcome | None = None
    parent: StageRun | None = None
    parent_index: int | None = None
    children: list[StageRun] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return self.outcome is None

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    @property
    def lineage(self) -> tuple[int, ...]:
        """The output indices from the input record down to this run's row."""
        if self.parent is None or self.parent_index is None:
            return ()
        return (*self.parent.lineage, self.parent_index)


#: Runs one stage on one row; must not raise (failures go in ``RecordOutcome.error``).
RunStage = Callable[[str, Mapping[str, Any]], Awaitable[RecordOutcome]]


async def evaluate(graph: StageGraph, record: Mapping[str, Any], run: RunStage) -> list[StageRun]:
    """Drive ``record`` through ``graph``; return every run and skip, upstream first.

    Independent stages run concurrently; a chained stage starts on an upstream's rows
    as soon as that upstream has finished the record. A failed or filtered upstream
    gives its readers no rows (the failure is the upstream's, dead-lettered once).
    The list is ordered by depth, then by topological order, then by row lineage, so
    it does not depend on which request answered first.
    """
    runs: list[StageRun] = []
    await _fan_out(graph, graph.roots, record, None, None, run, runs)
    order = {name: i for i, name in enumerate(graph.order)}
    runs.sort(key=lambda r: (r.depth, order[r.stage], r.lineage))
    return runs


async def _fan_out(
    graph: StageGraph,
    names: Sequence[str],
    row: Mapping[str, Any],
    parent: StageRun | None,
    parent_index: int | None,
    run: RunStage,
    runs: list[StageRun],
) -> None:
    jobs = []
    for name in names:
        item = StageRun(name, row, parent=parent, parent_index=parent_index)
        runs.append(item)
        if parent is not None:
            parent.children.append(item)
        if graph.nodes[name].when.matches(row):
            jobs.append(_run_node(graph, item, run, runs))
    if len(jobs) == 1:
        await jobs[0]
    elif jobs:
        await asyncio.gather(*jobs)


async def _run_node(graph: StageGraph, item: StageRun, run: RunStage, runs: list[StageRun]) -> None:
    try:
        outcome = await run(item.stage, item.row)
    except Exception as exc:  # the contract says run never raises; a bug must not lose a branch
        outcome = RecordOutcome(error=exc)
    item.outcome = outcome
    children = graph.nodes[item.stage].children
    if not children or outcome.error is not None or outcome.filtered is not None:
        return
    jobs = [
        _fan_out(graph, children, output.data, item, i, run, runs)
        for i, output in enumerate(outcome.outputs)
    ]
    if len(jobs) == 1:
        await jobs[0]
    elif jobs:
        await asyncio.gather(*jobs)
