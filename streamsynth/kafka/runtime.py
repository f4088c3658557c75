"""The worker process: from the command line to an exit code, the same for every entry.

``streamsynth run`` (what the Dockerfile, compose and Helm start) and ``python -m
streamsynth.kafka`` both come here, so the process the tests exercise is the one
that ships. In order:

1. :func:`capture_early_signals`, called by each entry before its slow imports
   (typer, aiokafka, the LLM stack): a SIGTERM/SIGINT that arrives then ends the
   process at once with status 0 (not death by the default handler), before it
   joins the group.
2. :func:`run`: load the config, configure logging (secrets registered for
   redaction), then :func:`arun_worker` in a fresh event loop.
3. :func:`arun_worker`: the loop's own signal handlers (first signal: graceful
   stop; second: exit at once), the metrics server, the background tasks (loop-lag
   sampling, console summary, LLM readiness probe), the worker itself.

SIGUSR1 logs a task dump (:func:`dump_tasks`): at WARNING, one line per live
asyncio task with its name and where it waits (its chain of awaits: code
locations only, never a record's text), at most :data:`DUMP_MAX_TASKS` of them,
so an operator sees where a hung shutdown waits without a debugger. Until the
loop's handlers are installed SIGUSR1 is ignored (its default action would kill
the process).

Exit codes: 0 after a graceful stop; 1 when the broker or the network fails
(one ``error:`` line too); 2 when the configuration is invalid (exactly one
``error:`` line on stderr naming the field, no traceback) or when a second
signal forced the exit; 3 when an exactly-once worker was fenced.

Only the standard library is imported at module level: this module is imported
before the capture is installed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    import logging

    from streamsynth.config import Settings
    from streamsynth.kafka.worker import Worker
    from streamsynth.metrics.health import HealthState
    from streamsynth.metrics.loop_lag import LoopLagMonitor
    from streamsynth.metrics.registry import Metrics
    from streamsynth.metrics.summary import ConsoleSummary

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
#: Exit status after a second signal (the first one asked for a graceful stop).
FORCED_EXIT_CODE = 2

LOGGER = "streamsynth.kafka.runtime"
#: Readiness probes (broker metadata, LLM ``/models``): how often, and how long one may take.
PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 3.0

#: SIGUSR1's task dump: at most this many tasks, each with this many frames of its
#: chain of awaits (the task's own coroutine and the innermost ones: where it waits).
DUMP_MAX_TASKS = 200
DUMP_STACK_FRAMES = 8

_early_signals: list[int] = []
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Not on Windows (where the loop has no signal handlers either).
_DUMP_SIGNAL: int | None = getattr(signal, "SIGUSR1", None)


# -- 1. early capture ---------------------------------------------------------------------
def _exit_early(signum: int, frame: FrameType | None) -> None:
    # Until the loop's handlers take over, the process has joined no group, opened no
    # connection and holds no record: stopping means leaving at once, with status 0.
    # The signal is also recorded, in case some library swallows the SystemExit.
    _early_signals.append(signum)
    raise SystemExit(EXIT_OK)


def capture_early_signals() -> None:
    """Make SIGTERM/SIGINT exit 0 at once until the event loop's handlers replace this.

    Call it first thing in a process entry, before the slow imports (a second or
    more on a busy machine). It does nothing off the main thread (``signal.signal``
    may only be called there).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _exit_early)
    if _DUMP_SIGNAL is not None:
        # No tasks to dump yet; a handler (not SIG_IGN, which children would inherit)
        # keeps the signal's default action from killing the process.
        signal.signal(_DUMP_SIGNAL, _ignore)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def early_stop_requested() -> bool:
    """Whether a stop signal arrived while :func:`capture_early_signals` was in charge."""
    return bool(_early_signals)


# -- 2. the process -----------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamsynth.kafka --config FILE``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m streamsynth.kafka",
        description="Run one worker until SIGTERM/SIGINT.",
    )
    parser.add_argument("--config", required=True, help="path of the YAML configuration")
    args = parser.parse_args(argv)
    return run(args.config)


def run(config: str | Path, *, stop_requested: Callable[[], bool] | None = None) -> int:
    """Load ``config`` (environment overrides apply), run the worker; the exit code."""
    from streamsynth.config import ConfigError, load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        return config_error(exc)
    return run_worker(settings, stop_requested=stop_requested)


def run_worker(settings: Settings, *, stop_requested: Callable[[], bool] | None = None) -> int:
    """Configure logging, run the worker until a signal, return the process exit code."""
    import contextlib
    import logging

    from streamsynth.config import ConfigError
    from streamsynth.engine.errors import StageConfigError
    from streamsynth.engine.loop import run as run_loop
    from streamsynth.kafka.repeats import RepeatFilter
    from streamsynth.logging import configure_logging, register_secret

    # aiokafka logs a broker outage ten lines a second: one per kind and interval is enough.
    configure_logging(settings.logging).addFilter(RepeatFilter())
    with contextlib.suppress(ConfigError):
        register_secret(settings.llm.resolve_api_key())
    for secret in (settings.kafka.sasl_password, settings.kafka.ssl_password):
        if secret is not None:
            register_secret(secret.get_secret_value())
    stop_requested = stop_requested or early_stop_requested
    if stop_requested():
        # Before aiokafka and the LLM stack are even imported: the fastest clean exit.
        logging.getLogger(LOGGER).info("stop requested during start-up: exiting")
        return EXIT_OK
    tune_collector()
    try:
        return run_loop(
            arun_worker(settings, stop_requested=stop_requested), kind=settings.worker.event_loop
        )
    except (ConfigError, StageConfigError) as exc:  # found while starting (unset api_key_env)
        return config_error(exc)


#: Allocations (net of frees) between young-generation collections; CPython's is 700.
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Import the worker's stack, move every object alive now out of the collector's
    reach (``gc.freeze``), and collect the young generation less often.

    The modules' objects (aiokafka, pydantic models, the LLM stack: about 100k) live
    as long as the process, yet every full collection walked them again: about 8 %
    of a busy worker's CPU went to the collector. Only what records create is
    collected from here on. A record creates a few dozen container objects and
    most die with it, so at CPython's threshold of 700 the young generation was
    collected every ~20 records, each pass walking the thousands of jobs in flight
    too; at 10,000 the collector's share of ``bench engine`` fell from about 0.5 s to
    0.35 s per 60k records (+5-10 % records/s), for at most 10,000 more uncollected
    objects (a few MB).
    """
    import gc

    import streamsynth.kafka.worker  # noqa: F401 - imported for its objects, to freeze them

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def config_error(exc: Exception) -> int:
    """Report an invalid configuration as one ``error:`` line on stderr; exit code 2."""
    print(f"error: {one_line(str(exc))}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


def one_line(text: str) -> str:
    """``"invalid configuration:\\n  a: x\\n  b: y"`` -> ``"invalid configuration: a: x; b: y"``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return text
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)


# -- 3. inside the event loop -------------------------------------------------------------
async def arun_worker(
    settings: Settings, *, stop_requested: Callable[[], bool] | None = None
) -> int:
    """Run a worker with signal handlers and the metrics server; return the exit code.

    ``stop_requested`` reports a signal that arrived before the handlers were installed
    (during start-up imports): the worker then exits 0 without joining the group.
    A :class:`~streamsynth.config.ConfigError` found while starting propagates.
    """
    import asyncio
    import logging

    from aiokafka.errors import KafkaError

    from streamsynth.metrics.health import HealthState
    from streamsynth.metrics.registry import Metrics

    log = logging.getLogger(LOGGER)
    metrics = Metrics(provider=settings.llm.provider)
    health = HealthState()
    worker = _worker_class(settings)(settings, metrics=metrics, health=health)
    _install_loop_handlers(worker.request_stop)
    quiet_unread_kafka_futures(asyncio.get_running_loop())
    if stop_requested is not None and stop_requested():
        log.info("stop requested during start-up: exiting")
        return EXIT_OK
    server = None
    background = None
    try:
        if settings.metrics.enabled:
            from streamsynth.metrics.server import start_metrics_server

            server = await start_metrics_server(
                metrics, health, settings.metrics.host, settings.metrics.port
            )
            log.info("metrics server listening", extra={"port": server.port})
        background = _start_background(settings, metrics, health, worker)
        await worker.run()
    except (KafkaError, OSError) as exc:
        # Typically the broker is unreachable at start-up, or the metrics port is taken;
        # nothing was committed.
        log.error("worker failed", extra={"error": type(exc).__name__, "detail": str(exc)})
        print(f"error: {one_line(failure_message(settings, exc))}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        if background is not None:
            await background.stop()
        if server is not None:
            await server.stop()
    return worker.exit_code or EXIT_OK  # exactly_once: 3 when fenced


#: What asyncio says of a failed future nobody read, when it is collected.
UNREAD_FUTURE = "Future exception was never retrieved"


def quiet_unread_kafka_futures(loop: asyncio.AbstractEventLoop) -> None:
    """Log aiokafka's unread failed futures at DEBUG, not asyncio's ERROR with a traceback.

    When a batch fails (a fenced producer, a broker outage past the delivery timeout),
    aiokafka fails each batch's drain waiter too, which nothing reads (0.14's
    ``MessageBatch.failure``): asyncio then logs one ERROR traceback per batch as they
    are collected, beside our own lines that report the failure (the fence, the retry
    warnings). Only plain futures holding a ``KafkaError`` are quieted: an unread task,
    or any other error, still goes to the loop's handler as before.
    """
    import asyncio
    import logging

    from aiokafka.errors import KafkaError

    log = logging.getLogger(LOGGER)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        future = context.get("future")
        error = context.get("exception")
        if (
            context.get("message") == UNREAD_FUTURE
            and isinstance(error, KafkaError)
            and not isinstance(future, asyncio.Task)
        ):
            log.debug("an unread failed Kafka future", extra={"error": type(error).__name__})
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _worker_class(settings: Settings) -> type[Worker]:
    """The worker for the configured processing guarantee."""
    if settings.kafka.processing_guarantee == "exactly_once":
        from streamsynth.kafka.exactly_once import ExactlyOnceWorker

        return ExactlyOnceWorker
    from streamsynth.kafka.worker import Worker

    return Worker


def failure_message(settings: Settings, exc: BaseException) -> str:
    """What an operator reads when the worker cannot run (exit 1)."""
    from aiokafka.errors import KafkaConnectionError

    name = type(exc).__name__
    if isinstance(exc, KafkaConnectionError):
        kafka = settings.kafka
        hint = (
            ""
            if kafka.security_protocol == "PLAINTEXT"
            else f" (check its {kafka.security_protocol} settings)"
        )
        return f"cannot reach the Kafka broker at {kafka.bootstrap_servers}{hint}: {name}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"
    # A client's message may carry a URL with credentials or an echoed key: this line
    # goes to stderr, past the logging filter, so it is scrubbed here.
    from streamsynth.redact import redact

    return redact(f"{name}: {exc}") if str(exc) else name


def _install_loop_handlers(request_stop: Callable[[], None]) -> None:
    """First signal: graceful stop. Second: exit at once (nothing unfinished was committed)."""
    import asyncio
    import logging
    import os

    log = logging.getLogger(LOGGER)
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            log.warning("second signal: exiting at once", extra={"signal": signum})
            logging.shutdown()
            os._exit(FORCED_EXIT_CODE)
        log.info("signal received: stopping", extra={"signal": signum})
        request_stop()

    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    if _DUMP_SIGNAL is not None:
        loop.add_signal_handler(_DUMP_SIGNAL, dump_tasks)


def dump_tasks(log: logging.Logger | None = None, *, limit: int = DUMP_MAX_TASKS) -> int:
    """Log every live task of the running loop (at most ``limit``) at WARNING; the
    number logged.

    One line per task: its name and its chain of awaits, from the task's coroutine to
    where it waits (``file:line function``; the innermost frames when the chain is
    longer than :data:`DUMP_STACK_FRAMES`). Tasks of rare kinds (the consume loop, the
    commit loop, a shutdown) come first, the many alike (one per record) last, so the
    bound cuts those; a last line counts what was left out, by kind.
    """
    import asyncio
    import logging
    from collections import Counter

    log = log or logging.getLogger(LOGGER)
    chains = [(task, _await_chain(task)) for task in asyncio.all_tasks()]
    kinds = Counter(_kind(chain) for _, chain in chains)
    chains.sort(key=lambda item: (kinds[_kind(item[1])], _kind(item[1]), item[0].get_name()))
    shown, rest = chains[:limit], chains[limit:]
    log.warning(
        f"task dump: {len(chains)} tasks", extra={"tasks": len(chains), "shown": len(shown)}
    )
    for task, chain in shown:
        log.warning(
            f"task {task.get_name()}: {_format_chain(chain)}", extra={"task": task.get_name()}
        )
    if rest:
        left = Counter(_kind(chain) for _, chain in rest)
        by_kind = ", ".join(f"{n} {kind}" for kind, n in left.most_common())
        log.warning(
            f"task dump: {len(rest)} more tasks left out ({by_kind})",
            extra={"left_out": len(rest)},
        )
    return len(shown)


def _await_chain(task: asyncio.Task[object]) -> list[FrameType]:
    """The frames of the coroutines ``task`` awaits through, outermost first.

    ``Task.get_stack`` gives only the task's own coroutine frame while it is suspended
    (the frames below are not on any stack then); the awaits it is suspended in are
    followed through ``cr_await`` instead, down to the future it waits for.
    """
    frames: list[FrameType] = []
    awaited: object = task.get_coro()
    while awaited is not None and len(frames) < 1000:  # a bound, should a chain loop
        frame = _attr(awaited, "cr_frame", "gi_frame", "ag_frame")
        if isinstance(frame, FrameType):
            frames.append(frame)
        awaited = _attr(awaited, "cr_await", "gi_yieldfrom", "ag_await")
    return frames or task.get_stack()


def _attr(obj: object, *names: str) -> object:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _kind(chain: list[FrameType]) -> str:
    """What a task is: the function of its own coroutine."""
    return chain[0].f_code.co_qualname if chain else "?"


def _format_chain(chain: list[FrameType]) -> str:
    where = [
        f"{'/'.join(Path(f.f_code.co_filename).parts[-2:])}:{f.f_lineno} {f.f_code.co_qualname}"
        for f in chain
    ]
    if len(where) > DUMP_STACK_FRAMES:  # the task's coroutine, then where it waits
        where = [where[0], "...", *where[-(DUMP_STACK_FRAMES - 1) :]]
    return " > ".join(where) if where else "(no frames)"


class _Background:
    """Event-loop lag sampling, the console summary and the readiness probes."""

    def __init__(
        self,
        lag: LoopLagMonitor,
        summary: ConsoleSummary | None,
        probes: list[asyncio.Task[None]],
    ) -> None:
        self.lag = lag
        self.summary = summary
        self.probes = probes

    async def stop(self) -> None:
        import asyncio
        import contextlib

        for probe in self.probes:
            probe.cancel()
        for probe in self.probes:
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        await self.lag.stop()
        if self.summary is not None:
            await self.summary.stop()


def _start_background(
    settings: Settings, metrics: Metrics, health: HealthState, worker: Worker
) -> _Background:
    import asyncio

    from streamsynth.config import ConfigError
    from streamsynth.metrics.loop_lag import LoopLagMonitor
    from streamsynth.metrics.summary import ConsoleSummary

    lag = LoopLagMonitor(metrics)
    lag.start()
    summary = None
    if settings.metrics.summary_interval_s > 0:
        summary = ConsoleSummary(metrics, settings.metrics.summary_interval_s)
        summary.start()  # prints only when stdout is a terminal
    try:
        api_key = settings.llm.resolve_api_key()
    except ConfigError:
        api_key = "EMPTY"  # the client reports the real problem on its first request
    loop = asyncio.get_running_loop()
    probes = [
        loop.create_task(
            _watch_llm(settings.llm.base_urls, api_key, health), name="streamsynth-llm-probe"
        ),
        loop.create_task(_watch_broker(worker, health), name="streamsynth-broker-probe"),
    ]
    return _Background(lag, summary, probes)


async def _watch_llm(base_urls: Sequence[str], api_key: str, health: HealthState) -> None:
    """Readiness follows the LLM: some endpoint answers ``GET /models`` now (or not)."""
    import asyncio
    import logging

    from streamsynth.llm.probe import endpoint_answers

    log = logging.getLogger(LOGGER)
    while True:
        reachable = False
        for url in base_urls:
            if await endpoint_answers(url, api_key, timeout_s=PROBE_TIMEOUT_S):
                reachable = True
                break
        if reachable != health.llm_reachable:
            # Transitions only: a long outage is one line, not one per probe.
            log.log(
                logging.INFO if reachable else logging.WARNING,
                "LLM reachable again" if reachable else "no LLM endpoint answers",
                extra={"endpoints": len(base_urls)},
            )
        health.set_llm_reachable(reachable)
        await asyncio.sleep(PROBE_INTERVAL_S)


async def _watch_broker(worker: Worker, health: HealthState) -> None:
    """Readiness follows the broker: it answers a metadata request now (or not)."""
    import asyncio
    import logging

    log = logging.getLogger(LOGGER)
    while True:
        await asyncio.sleep(PROBE_INTERVAL_S)
        try:
            source = worker.running.source
        except RuntimeError:
            continue  # not started yet
        reachable = await source.broker_reachable(PROBE_TIMEOUT_S)
        if reachable != health.broker_reachable:
            log.log(
                logging.INFO if reachable else logging.WARNING,
                "Kafka broker reachable again" if reachable else "the Kafka broker does not answer",
            )
        health.set_broker_reachable(reachable)
