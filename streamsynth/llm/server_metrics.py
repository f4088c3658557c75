"""The server's own view of its queue, read from its Prometheus ``/metrics``.

vLLM exports ``vllm:num_requests_running`` (sequences in its running batch) and
``vllm:num_requests_waiting`` (requests it has accepted but not yet scheduled); the
serving simulator exports them under the same names. Requests waiting at the server
are what the adaptive limit must avoid, and unlike client-side latency they do not
rise merely because a larger batch decodes more slowly (see "The server's own
queue" in :mod:`streamsynth.llm.concurrency`).

One :class:`ServerMetricsScraper` per endpoint reads the two gauges about once a
second, on the endpoint's event loop, and hands them to its limiter. With
``llm.server_metrics: auto`` the first answer decides: an endpoint that answers its
metrics URL without the gauges (OpenAI, a NIM without metrics, a 404) is not asked
again and its limit keeps following latency alone; one that never answers is given
up after ``give_up_after`` tries. Either way it is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

import aiohttp

from streamsynth.redact import redact

__all__ = ["RUNNING", "WAITING", "ServerMetricsScraper", "default_metrics_url", "parse_gauges"]

log = logging.getLogger("streamsynth.llm.server_metrics")

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
_PREFIX = "vllm:num_requests_"


def default_metrics_url(base_url: str) -> str:
    """vLLM serves ``/metrics`` beside ``/v1``: the base URL without ``/v1``."""
    return base_url.rstrip("/").removesuffix("/v1") + "/metrics"


def parse_gauges(text: str) -> tuple[float, float] | None:
    """``(running, waiting)`` from Prometheus text, each summed over its label sets
    (one per model or engine); None unless both are there."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(_PREFIX):
            continue  # comments, and every other family: not even split
        name, value = _sample(line)
        if name in (RUNNING, WAITING) and value is not None:
            found[name] = found.get(name, 0.0) + value
    if RUNNING in found and WAITING in found:
        return found[RUNNING], found[WAITING]
    return None


def _sample(line: str) -> tuple[str, float | None]:
    """One sample line: ``name{labels} value [timestamp]`` or ``name value``."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name, rest = line[:brace], line[line.rfind("}") + 1 :]
    elif space != -1:
        name, rest = line[:space], line[space:]
    else:
        return line, None
    fields = rest.split()
    try:
        value = float(fields[0])
    except (IndexError, ValueError):
        return name, None
    return name, value if math.isfinite(value) else None


class ServerMetricsScraper:
    """Reads one endpoint's gauges every ``interval_s`` and passes ``(running,
    waiting)`` to ``on_load``. Started by the endpoint's first attempt (a running loop
    is needed), stopped by :meth:`aclose`."""

    def __init__(
        self,
        endpoint: str,
        url: str,
        on_load: Callable[[float, float], None],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 0.5,
        give_up_after: int = 10,
    ) -> None:
        self.endpoint = endpoint
        self.url = url
        self._on_load = on_load
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._give_up_after = give_up_after
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: "probing" until the first answer, then "live" or "absent" (for good).
        self.state = "probing"
        self.reads = 0

    def ensure_started(self) -> None:
        """Start reading (a no-op once started or closed); call on the endpoint's loop."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"server-metrics {self.endpoint}"
            )

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        failures = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while self.state != "absent":
                began = loop.time()
                failures = self._take(await self._read(session), failures)
                await asyncio.sleep(max(0.0, self._interval_s - (loop.time() - began)))

    async def _read(self, session: aiohttp.ClientSession) -> tuple[float, float] | bool:
        """The gauges; False when the server answered without them; True when it did
        not answer (a connection error or timeout: maybe next time)."""
        try:
            async with session.get(self.url) as resp:
                if resp.status != 200:
                    return False
                gauges = parse_gauges(await resp.text())
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return True
        return gauges if gauges is not None else False

    def _take(self, read: tuple[float, float] | bool, failures: int) -> int:
        """Act on one read; returns the failures in a row so far."""
        if isinstance(read, tuple):
            if self.state != "live":
                log.info(
                    "adaptive limit follows the server's own queue",
                    extra={"endpoint": self.endpoint, "metrics_url": redact(self.url)},
                )
                self.state = "live"
            self.reads += 1
            self._on_load(*read)
            return 0
        failures += 1
        if self.state == "probing" and (read is False or failures >= self._give_up_after):
            # Answered without the gauges (or never answered): latency alone, for good.
            log.info(
                "no vllm gauges at the server's metrics URL: adaptive limit by latency",
                extra={"endpoint": self.endpoint, "metrics_url": redact(self.url)},
            )
            self.state = "absent"
        return failures
