"""Every Prometheus instrument streamsynth exports, in one place.

Base units only (seconds, bytes), bounded label sets: stage and model names,
topics and partitions, endpoints from config, error *types*. Never a record id,
an offset or free text as a label. The instruments are the lock-free ``Loop*``
kinds of :mod:`streamsynth.metrics.instruments`: every update is made on the
worker's event-loop thread, several per record.
"""

from __future__ import annotations

import platform
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from streamsynth import __version__
from streamsynth.llm.observer import LLMObserver
from streamsynth.llm.types import Usage
from streamsynth.metrics.instruments import LoopCounter, LoopGauge, LoopHistogram

#: OpenTelemetry GenAI semantic-convention buckets.
OTEL_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
OTEL_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Client-side waits for a slot: most are 0 or milliseconds; a saturated group's, seconds.
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """A labelled metric's children, found by their label values in one dict lookup.

    ``labels()`` validates and stringifies the values and takes a lock on every call
    (about 1.5 us on the reference VM); the LLM observer makes several such calls per
    request, which at thousands of requests in flight was about a tenth of the worker's
    CPU. The values must already be strings. Nothing removes these metrics' children,
    so a remembered one never goes stale; the label sets are bounded (see above).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The instruments of one worker, registered on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, provider: str = "openai"):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.provider = provider
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        # -- LLM (OpenTelemetry GenAI names) ------------------------------------------
        self.gen_ai_duration = LoopHistogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of a GenAI client operation, retries and backoff included.",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "stage",
             "error_type"],
            buckets=OTEL_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.gen_ai_tokens = LoopHistogram(
            "gen_ai_client_token_usage",
            "Tokens per GenAI operation, as billed (from the response usage).",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_token_type",
             "gen_ai_request_model", "stage"],
            buckets=OTEL_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.llm_tokens = LoopCounter(
            "streamsynth_llm_tokens", "Tokens used, by stage, model and type (input/output).",
            ["stage", "model", "type"], registry=r,
        )  # fmt: skip
        self.llm_requests = LoopCounter(
            "streamsynth_llm_requests", "HTTP attempts to LLM endpoints, by outcome status.",
            ["stage", "model", "status"], registry=r,
        )  # fmt: skip
        self.llm_retries = LoopCounter(
            "streamsynth_llm_retries", "Attempts retried, by the error type that caused it.",
            ["stage", "model", "reason"], registry=r,
        )  # fmt: skip
        self.llm_inflight = LoopGauge(
            "streamsynth_llm_inflight_requests", "Requests holding a concurrency slot.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.llm_concurrency_limit = LoopGauge(
            "streamsynth_llm_concurrency_limit", "Current (adaptive) concurrency limit.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.llm_slot_wait = LoopHistogram(
            "streamsynth_llm_slot_wait_seconds",
            "Time a request queued for a concurrency slot (requests that found none free).",
            ["endpoint"], registry=r,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )  # fmt: skip
        self.llm_cache_hits = LoopCounter(
            "streamsynth_llm_cache_hits", "Requests answered from the response cache.",
            ["stage", "model"], registry=r,
        )  # fmt: skip
        self.llm_cache_misses = LoopCounter(
            "streamsynth_llm_cache_misses", "Cache lookups that went to the endpoint.",
            ["stage", "model"], registry=r,
        )  # fmt: skip
        self.llm_cache_entries = LoopGauge(
            "streamsynth_llm_cache_entries",
            "Answers in the response cache (on disk for sqlite); bounded by its max entries.",
            registry=r,
        )  # fmt: skip
        self.llm_cache_evictions = LoopCounter(
            "streamsynth_llm_cache_evictions",
            "Answers the response cache dropped (least recently used) to stay within its bound.",
            registry=r,
        )  # fmt: skip
        self.llm_cost = LoopCounter(
            "streamsynth_llm_cost_usd", "Money spent, from the configured per-model prices.",
            ["stage", "model"], registry=r,
        )  # fmt: skip
        self.llm_usage_unknown = LoopCounter(
            "streamsynth_llm_usage_unknown", "Answers kept without a usable usage block.",
            ["stage", "model"], registry=r,
        )  # fmt: skip
        self.llm_circuit_open = LoopGauge(
            "streamsynth_llm_circuit_open", "1 while the endpoint's circuit breaker is open.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.llm_ratelimit_remaining_requests = LoopGauge(
            "streamsynth_llm_ratelimit_remaining_requests",
            "Requests left in the window, as reported by x-ratelimit-remaining-requests.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.llm_ratelimit_remaining_tokens = LoopGauge(
            "streamsynth_llm_ratelimit_remaining_tokens",
            "Tokens left in the window, as reported by x-ratelimit-remaining-tokens.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        # -- model groups and routing (issue #17) ---------------------------------------
        self.llm_endpoint_group = LoopGauge(
            "streamsynth_llm_endpoint_group",
            "1 for each endpoint, labelled with its model group (join on endpoint).",
            ["endpoint", "model_group"], registry=r,
        )  # fmt: skip
        self.llm_routed = LoopCounter(
            "streamsynth_llm_routed",
            "Attempts routed, by replica and route (home: the stage's own replica; spill: "
            "home was full; least_loaded: no affinity).",
            ["model_group", "endpoint", "route"], registry=r,
        )  # fmt: skip
        self.llm_queue_wait = LoopHistogram(
            "streamsynth_llm_queue_wait_seconds",
            "Time an attempt waited in the client (rate budget, concurrency slot, global "
            "bound) before it was sent.",
            ["model_group", "stage"], buckets=QUEUE_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.llm_endpoint_prompt_tokens = LoopCounter(
            "streamsynth_llm_endpoint_prompt_tokens",
            "Prompt tokens per endpoint, cached=true for those the server's prefix cache "
            "served (usage.prompt_tokens_details.cached_tokens; only servers that report it).",
            ["endpoint", "cached"], registry=r,
        )  # fmt: skip

        # -- records and stages ---------------------------------------------------------
        self.records_consumed = LoopCounter(
            "streamsynth_records_consumed", "Records fetched from input topics.",
            ["topic"], registry=r,
        )  # fmt: skip
        self.records_produced = LoopCounter(
            "streamsynth_records_produced", "Output records acknowledged by the broker.",
            ["stage", "topic"], registry=r,
        )  # fmt: skip
        self.records_filtered = LoopCounter(
            "streamsynth_records_filtered", "Records a stage's filters dropped on purpose.",
            ["stage", "reason"], registry=r,
        )  # fmt: skip
        self.records_skipped = LoopCounter(
            "streamsynth_records_skipped",
            "Rows a stage's `when:` routed past it (finished for it, published nowhere).",
            ["stage"], registry=r,
        )  # fmt: skip
        self.records_dlq = LoopCounter(
            "streamsynth_records_dlq", "Records sent to the dead-letter topic.",
            ["stage", "reason"], registry=r,
        )  # fmt: skip
        self.answers_truncated = LoopCounter(
            "streamsynth_answers_truncated",
            "LLM answers that stopped at max_tokens (finish_reason length), whatever the "
            "stage's on_truncated then did with them.",
            ["stage"], registry=r,
        )  # fmt: skip
        self.record_e2e_latency = LoopHistogram(
            "streamsynth_record_e2e_latency_seconds",
            "From the input record's Kafka timestamp to the output's produce ack.",
            ["stage"], buckets=E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_duration = LoopHistogram(
            "streamsynth_stage_duration_seconds", "Time one stage spent on one record.",
            ["stage"], buckets=OTEL_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.inflight_records = LoopGauge(
            "streamsynth_inflight_records", "Records fetched and not yet finished.", registry=r
        )
        self.records_awaiting_ack = LoopGauge(
            "streamsynth_records_awaiting_ack",
            "Of the records in flight, those whose outputs are all with the sink, waiting "
            "for the broker's acknowledgement (a part of the window of their own).",
            registry=r,
        )  # fmt: skip

        # -- Kafka ----------------------------------------------------------------------
        self.consumer_lag = LoopGauge(
            "streamsynth_consumer_lag_records", "High watermark minus committed offset.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.uncommitted = LoopGauge(
            "streamsynth_uncommitted_records",
            "Records fetched past the committed offset (finished or not).",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.committed_offset = LoopGauge(
            "streamsynth_committed_offset", "Last committed offset.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.offset_commits = LoopCounter(
            "streamsynth_offset_commits", "Offset commits, by status (ok/failed).",
            ["status"], registry=r,
        )  # fmt: skip
        self.partitions_assigned = LoopGauge(
            "streamsynth_partitions_assigned", "Partitions assigned to this worker.", registry=r
        )
        self.partitions_paused = LoopGauge(
            "streamsynth_partitions_paused", "Partitions paused for backpressure.", registry=r
        )
        self.rebalances = LoopCounter(
            "streamsynth_rebalances", "Partition assignments and revocations.",
            ["event"], registry=r,
        )  # fmt: skip
        self.event_loop_lag = LoopGauge(
            "streamsynth_event_loop_lag_seconds",
            "How late a periodic event-loop callback ran (last sample).", registry=r,
        )  # fmt: skip
        self.build_info = LoopGauge(
            "streamsynth_build_info", "Build information (value is always 1).",
            ["version", "python"], registry=r,
        )  # fmt: skip
        self.build_info.labels(__version__, platform.python_version()).set(1)

    def llm_observer(self) -> PrometheusLLMObserver:
        return PrometheusLLMObserver(self)


class PrometheusLLMObserver(LLMObserver):
    """Feeds LLM-layer events into :class:`Metrics` (per-request events through
    :class:`Children`, so no ``labels()`` call is made per request)."""

    def __init__(self, metrics: Metrics) -> None:
        m = self.m = metrics
        self._duration = Children(m.gen_ai_duration)
        self._token_hist = Children(m.gen_ai_tokens)
        self._tokens = Children(m.llm_tokens)
        self._endpoint_prompt = Children(m.llm_endpoint_prompt_tokens)
        self._requests = Children(m.llm_requests)
        self._inflight = Children(m.llm_inflight)
        self._slot_wait = Children(m.llm_slot_wait)
        self._routed = Children(m.llm_routed)
        self._queue_wait = Children(m.llm_queue_wait)
        self._cache_hits = Children(m.llm_cache_hits)
        self._cache_misses = Children(m.llm_cache_misses)

    def on_operation(
        self,
        *,
        stage: str,
        model: str,
        endpoint: str | None,
        duration_s: float,
        error_type: str | None,
        usage: Usage | None,
        attempts: int,
    ) -> None:
        provider = self.m.provider
        self._duration("chat", provider, model, stage, error_type or "").observe(duration_s)
        if usage is None:
            return
        self._token_hist("chat", provider, "input", model, stage).observe(usage.prompt_tokens)
        self._token_hist("chat", provider, "output", model, stage).observe(usage.completion_tokens)
        self._tokens(stage, model, "input").inc(usage.prompt_tokens)
        self._tokens(stage, model, "output").inc(usage.completion_tokens)
        if usage.cached_tokens is not None and endpoint is not None:
            cached = min(usage.cached_tokens, usage.prompt_tokens)
            self._endpoint_prompt(endpoint, "true").inc(cached)
            self._endpoint_prompt(endpoint, "false").inc(usage.prompt_tokens - cached)

    def on_attempt(self, *, stage: str, model: str, endpoint: str, status: str) -> None:
        self._requests(stage, model, status).inc()

    def on_retry(self, *, stage: str, model: str, reason: str) -> None:
        self.m.llm_retries.labels(stage, model, reason).inc()

    def on_inflight(self, *, endpoint: str, inflight: int) -> None:
        self._inflight(endpoint).set(inflight)

    def on_concurrency_limit(self, *, endpoint: str, limit: int) -> None:
        self.m.llm_concurrency_limit.labels(endpoint).set(limit)
        self._slot_wait(endpoint)  # the series exists before the first queue

    def on_slot_wait(self, *, endpoint: str, seconds: float) -> None:
        self._slot_wait(endpoint).observe(seconds)

    def on_cache(self, *, stage: str, model: str, hit: bool) -> None:
        (self._cache_hits if hit else self._cache_misses)(stage, model).inc()

    def on_cache_size(self, *, entries: int) -> None:
        self.m.llm_cache_entries.set(entries)

    def on_cache_evictions(self, *, count: int) -> None:
        self.m.llm_cache_evictions.inc(count)

    def on_cost(self, *, stage: str, model: str, usd: float) -> None:
        self.m.llm_cost.labels(stage, model).inc(usd)

    def on_usage_unknown(self, *, stage: str, model: str, endpoint: str | None) -> None:
        self.m.llm_usage_unknown.labels(stage, model).inc()

    def on_circuit(self, *, endpoint: str, open: bool) -> None:
        self.m.llm_circuit_open.labels(endpoint).set(1 if open else 0)

    def on_endpoint_group(self, *, endpoint: str, model_group: str) -> None:
        self.m.llm_endpoint_group.labels(endpoint, model_group).set(1)

    def on_route(self, *, model_group: str, endpoint: str, route: str) -> None:
        self._routed(model_group, endpoint, route).inc()

    def on_queue_wait(self, *, stage: str, model_group: str, seconds: float) -> None:
        self._queue_wait(model_group, stage).observe(seconds)

    def on_rate_limit_remaining(
        self, *, endpoint: str, requests: float | None, tokens: float | None
    ) -> None:
        if requests is not None:
            self.m.llm_ratelimit_remaining_requests.labels(endpoint).set(requests)
        if tokens is not None:
            self.m.llm_ratelimit_remaining_tokens.labels(endpoint).set(tokens)
