"""Liveness and readiness state, updated by the worker and read by /healthz and /readyz.

Liveness answers "is this process stuck?" only: the event loop runs and the
consume loop's heartbeat is fresh. It never checks the broker or the LLM, so a
slow model never gets a worker restarted.

Readiness gates rollouts and load balancing, and follows the present, not the
past: started, joined the group (partitions assigned), the LLM endpoint answered
once, and *now*: the broker answers (the runtime's broker probe), some LLM
endpoint answers (the runtime's LLM probe) and not every endpoint's circuit is
open (the client's breakers, through :class:`ReadinessObserver`). Each of these
turns 503 with its reason while it lasts and 200 again when it recovers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from streamsynth.metrics.registry import Metrics, PrometheusLLMObserver


@dataclass
class HealthState:
    #: A consume-loop heartbeat older than this makes /healthz fail.
    heartbeat_timeout_s: float = 60.0
    started: bool = False
    joined: bool = False
    #: Some LLM endpoint answered at least once (the probe, or a record's answer).
    llm_ok: bool = False
    stopping: bool = False
    #: The last broker probe's verdict (True until a probe says otherwise).
    broker_reachable: bool = True
    #: The last LLM probe's verdict (True until a probe says otherwise).
    llm_reachable: bool = True
    #: Endpoint -> whether its circuit breaker is open now.
    circuits: dict[str, bool] = field(default_factory=dict)
    last_heartbeat: float = field(default_factory=time.monotonic)

    def mark_started(self) -> None:
        self.started = True
        self.heartbeat()

    def heartbeat(self) -> None:
        self.last_heartbeat = time.monotonic()

    def mark_joined(self, joined: bool = True) -> None:
        self.joined = joined

    def mark_llm_ok(self) -> None:
        self.llm_ok = True

    def mark_stopping(self) -> None:
        self.stopping = True

    def set_broker_reachable(self, reachable: bool) -> None:
        self.broker_reachable = reachable

    def set_llm_reachable(self, reachable: bool) -> None:
        self.llm_reachable = reachable
        if reachable:
            self.llm_ok = True

    def set_circuit(self, endpoint: str, open_: bool) -> None:
        self.circuits[endpoint] = open_

    def heartbeat_age_s(self) -> float:
        return time.monotonic() - self.last_heartbeat

    def live(self) -> tuple[bool, str]:
        age = self.heartbeat_age_s()
        if age > self.heartbeat_timeout_s:
            return False, f"consume loop heartbeat is {age:.1f}s old"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        missing = [
            name
            for name, ok in (
                ("started", self.started),
                ("joined the consumer group", self.joined),
                ("LLM endpoint answered", self.llm_ok),
                ("not stopping", not self.stopping),
            )
            if not ok
        ]
        if missing:
            return False, "waiting: " + ", ".join(missing)
        down = self._down()
        if down:
            return False, "unavailable: " + "; ".join(down)
        return True, "ok"

    def _down(self) -> list[str]:
        """What is failing now (each recovers on its own)."""
        down = []
        if not self.broker_reachable:
            down.append("the Kafka broker does not answer")
        if not self.llm_reachable:
            down.append("no LLM endpoint answers")
        if self.circuits and all(self.circuits.values()):
            down.append("every LLM endpoint's circuit is open: " + ", ".join(sorted(self.circuits)))
        return down


class ReadinessObserver(PrometheusLLMObserver):
    """The metrics observer that also tells :class:`HealthState` about circuit changes."""

    def __init__(self, metrics: Metrics, health: HealthState) -> None:
        super().__init__(metrics)
        self.health = health

    def on_inflight(self, *, endpoint: str, inflight: int) -> None:
        super().on_inflight(endpoint=endpoint, inflight=inflight)
        # An endpoint counts once it was used: one never tried is not known to be down.
        self.health.circuits.setdefault(endpoint, False)

    def on_circuit(self, *, endpoint: str, open: bool) -> None:
        super().on_circuit(endpoint=endpoint, open=open)
        self.health.set_circuit(endpoint, open)
