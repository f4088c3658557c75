"""Which unit of work has sent an LLM request: for a caller that must know what it may drop.

A Kafka worker giving up a partition on a rebalance waits only for records whose
requests are already on the wire (the server is working on them, dropping them
wastes that work) and releases at once the ones still queued for a slot. It
registers the record as the current unit with :func:`track` inside the record's
task; :func:`mark_on_wire`, called by the LLM client just before it sends a request,
flags it. A context variable carries the unit, so it follows the record into the
tasks its stages start and never crosses to another record.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class Unit(Protocol):
    """Anything with an ``on_wire`` flag (the worker's in-flight record)."""

    on_wire: bool


_current: ContextVar[Unit | None] = ContextVar("streamsynth_llm_unit", default=None)


def track(unit: Unit) -> None:
    """Make ``unit`` the current unit of the running task (and of tasks it starts)."""
    _current.set(unit)


def mark_on_wire() -> None:
    """A request is being sent: flag the current unit, if any (cheap: one lookup)."""
    unit = _current.get()
    if unit is not None:
        unit.on_wire = True
