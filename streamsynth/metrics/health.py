"""Liveness and readiness state, updated by the worker and read by /healthz and /readyz.

Liveness answers "is this process stuck?" only: the event loop runs and the
consume loop's heartbeat is fresh. It never checks the broker or the LLM, so a
slow model never gets a worker restarted. Readiness gates rollouts: started,
joined the group (partitions assigned), and the LLM endpoint answered once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class HealthState:
    #: A consume-loop heartbeat older than this makes /healthz fail.
    heartbeat_timeout_s: float = 60.0
    started: bool = False
    joined: bool = False
    llm_ok: bool = False
    stopping: bool = False
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
        return (not missing, "ok" if not missing else "waiting: " + ", ".join(missing))
