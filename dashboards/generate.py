"""Writes dashboards/streamsynth.json: the streamsynth Grafana dashboard.

The JSON is generated so that every panel follows one layout and one selector
convention; edit this file, run ``python dashboards/generate.py``, commit both.
tests/metrics/test_dashboard.py fails when the JSON is stale.

Panels whose events are rare in normal operation (429s, DLQ, filtered records,
an open circuit) use ``X or (Y * 0)``: they show 0 instead of "No data", so an
empty panel always means "not scraped", never "nothing went wrong".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("streamsynth.json")
DS = {"type": "prometheus", "uid": "${datasource}"}

#: Label matchers every query carries; stage and model are added where the metric has them.
SEL = 'job=~"$job", instance=~"$instance"'
SEL_STAGE = SEL + ', stage=~"$stage"'
SEL_MODEL = SEL_STAGE + ', model=~"$model"'
SEL_GENAI = SEL_STAGE + ', gen_ai_request_model=~"$model"'
RI = "$__rate_interval"

Target = tuple[str, str]  # (expr, legend)


def _rate(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RI}]))"


def _gauge(metric: str, sel: str, by: str, agg: str = "sum") -> str:
    return f"{agg} by ({by}) ({metric}{{{sel}}})"


def _quantiles(metric: str, sel: str, by: str) -> list[Target]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RI}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


class Layout:
    """Places panels left to right, three per line, rows full width."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str, *, repeat: str | None = None) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        row: dict[str, Any] = {
            "type": "row",
            "id": self._id(),
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
        }
        if repeat is not None:
            # Grafana repeats the row (and its panels) once per selected value of the variable.
            row["repeat"] = repeat
        self.panels.append(row)
        self.y += 1

    def panel(
        self,
        title: str,
        targets: list[Target],
        unit: str,
        description: str,
        *,
        kind: str = "timeseries",
        stack: bool = False,
    ) -> None:
        custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        if kind == "stat":
            custom = {}
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        self.panels.append(
            {
                "type": kind,
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
                "options": options,
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": lg}
                    for i, (e, lg) in enumerate(targets)
                ],
            }
        )
        self.x += 8
        if self.x >= 24:
            self.x = 0
            self.y += 8


def _or_zero(expr: str, fallback: str) -> str:
    """``expr``, or the label sets of ``fallback`` at 0 when ``expr`` has no series yet."""
    return f"({expr}) or ({fallback} * 0)"


def red_row(lay: Layout) -> None:
    lay.row("Throughput and errors per stage (RED)")
    stage_rate = _rate("streamsynth_stage_duration_seconds_count", SEL_STAGE, "stage")
    lay.panel(
        "Records consumed / s",
        [(_rate("streamsynth_records_consumed_total", SEL, "topic"), "{{topic}}")],
        "reqps",
        "Records fetched from the input topics.",
    )
    lay.panel(
        "Records produced / s by stage",
        [(_rate("streamsynth_records_produced_total", SEL_STAGE, "stage"), "{{stage}}")],
        "reqps",
        "Output records acknowledged by the broker, per stage.",
        stack=True,
    )
    dlq_by_stage = _rate("streamsynth_records_dlq_total", SEL_STAGE, "stage")
    lay.panel(
        "Error ratio by stage",
        [(f"({_or_zero(dlq_by_stage, stage_rate)}) / {stage_rate}", "{{stage}}")],
        "percentunit",
        "Records dead-lettered divided by records the stage processed.",
    )
    lay.panel(
        "Stage duration p50 / p95 / p99",
        _quantiles("streamsynth_stage_duration_seconds", SEL_STAGE, "stage"),
        "s",
        "Time one stage spends on one record, LLM call included.",
    )
    lay.panel(
        "End-to-end latency p50 / p95 / p99",
        _quantiles("streamsynth_record_e2e_latency_seconds", SEL_STAGE, "stage"),
        "s",
        "From the input record's Kafka timestamp to the output's produce ack.",
    )
    filtered = _rate("streamsynth_records_filtered_total", SEL_STAGE, "stage")
    lay.panel(
        "Records filtered / s by stage",
        [(_or_zero(filtered, stage_rate), "{{stage}}")],
        "reqps",
        "Records a stage's filters dropped on purpose (not errors).",
    )
    lay.panel(
        "Records in flight",
        [
            (f"sum by (instance) (streamsynth_inflight_records{{{SEL}}})", "{{instance}}"),
            (
                f"sum by (instance) (streamsynth_records_awaiting_ack{{{SEL}}})",
                "{{instance}} awaiting ack",
            ),
        ],
        "short",
        "Fetched and not yet finished, and of those the ones whose outputs only await the "
        "broker's ack; partitions pause when either the rest or those reach "
        "worker.max_inflight_records.",
    )


def stage_rows(lay: Layout) -> None:
    """One row per stage of the graph: where the rows it received went."""
    lay.row("Stage $stage", repeat="stage")
    stage_rate = _rate("streamsynth_stage_duration_seconds_count", SEL_STAGE, "stage")
    skipped = _rate("streamsynth_records_skipped_total", SEL_STAGE, "stage")
    outcomes = [
        (_rate("streamsynth_records_produced_total", SEL_STAGE, "stage"), "produced"),
        (_or_zero(skipped, stage_rate), "skipped (when)"),
        (_or_zero(_rate("streamsynth_records_filtered_total", SEL_STAGE, "stage"), stage_rate),
         "filtered"),
        (_or_zero(_rate("streamsynth_records_dlq_total", SEL_STAGE, "stage"), stage_rate), "dlq"),
    ]  # fmt: skip
    lay.panel(
        "Rows / s: produced, skipped, filtered, DLQ",
        outcomes,
        "reqps",
        "What became of the rows the stage received: outputs, skipped by its when:, "
        "dropped by its filters, dead-lettered.",
        stack=True,
    )
    lay.panel(
        "Rows skipped by when: / s",
        [(_or_zero(skipped, stage_rate), "{{stage}}")],
        "reqps",
        "Rows routed past the stage by its when: conditions (finished, published nowhere).",
    )
    lay.panel(
        "Stage duration p50 / p95 / p99 (this stage)",
        _quantiles("streamsynth_stage_duration_seconds", SEL_STAGE, "stage"),
        "s",
        "Time this stage spends on one row it received, LLM calls included.",
    )
    dlq_reason = SEL_STAGE + ', reason="{}"'
    lay.panel(
        "Invalid structured outputs / s",
        [(_or_zero(_rate("streamsynth_records_dlq_total", dlq_reason.format("invalid_output"),
                         "stage"), stage_rate), "{{stage}}")],
        "reqps",
        "Rows dead-lettered because the answer stayed invalid JSON (or broke the stage's "
        "response_format schema) after every re-ask.",
    )  # fmt: skip
    lay.panel(
        "Context-length rejections / s",
        [(_or_zero(_rate("streamsynth_records_dlq_total", dlq_reason.format("context_length"),
                         "stage"), stage_rate), "{{stage}}")],
        "reqps",
        "Rows dead-lettered because the prompt does not fit llm.context_tokens (not sent), "
        "or the server answered 400 for context length.",
    )  # fmt: skip
    lay.panel(
        "Truncated answers / s",
        [(_or_zero(_rate("streamsynth_answers_truncated_total", SEL_STAGE, "stage"),
                   stage_rate), "{{stage}}")],
        "reqps",
        "Answers that stopped at max_tokens (finish_reason length); on_truncated keeps, "
        "filters or dead-letters them.",
    )  # fmt: skip


def llm_row(lay: Layout) -> None:
    lay.row("LLM")
    lay.panel(
        "LLM request latency p50 / p95 / p99",
        _quantiles("gen_ai_client_operation_duration_seconds", SEL_GENAI, "gen_ai_request_model"),
        "s",
        "One logical request, retries and backoff included (OTel GenAI duration).",
    )
    lay.panel(
        "Tokens / s (input, output)",
        [(_rate("streamsynth_llm_tokens_total", SEL_MODEL, "type"), "{{type}}")],
        "short",
        "Billed tokens from the responses' usage blocks.",
    )
    req_rate = _rate("streamsynth_llm_requests_total", SEL_MODEL, "model")
    rate_429 = _rate("streamsynth_llm_requests_total", SEL_MODEL + ', status="http_429"', "model")
    lay.panel(
        "429 responses / s",
        [
            (_or_zero(rate_429, req_rate), "429 {{model}}"),
            (_rate("streamsynth_llm_retries_total", SEL_MODEL, "reason"), "retry {{reason}}"),
        ],
        "reqps",
        "Rate-limit answers, and every retry by its cause.",
    )
    lay.panel(
        "LLM attempts / s by status",
        [(_rate("streamsynth_llm_requests_total", SEL_MODEL, "status"), "{{status}}")],
        "reqps",
        "HTTP attempts by outcome (ok or an error type).",
        stack=True,
    )
    lay.panel(
        "In-flight requests vs concurrency limit",
        [
            (f"sum by (endpoint) (streamsynth_llm_inflight_requests{{{SEL}}})", "in flight"),
            (f"sum by (endpoint) (streamsynth_llm_concurrency_limit{{{SEL}}})", "limit"),
        ],
        "short",
        "Requests holding a slot against the (adaptive) limit, per endpoint. The limit "
        "ramps up, settles where the server starts queueing, and is cut once per burst "
        "of 429s/timeouts (control law: streamsynth/llm/concurrency.py).",
    )
    lay.panel(
        "Queue wait for a concurrency slot p50 / p95 / p99",
        _quantiles("streamsynth_llm_slot_wait_seconds", SEL, "endpoint"),
        "s",
        "How long requests that found every slot taken waited for one, per endpoint: "
        "the worker's own queue in front of the limit.",
    )
    hits = f"sum(rate(streamsynth_llm_cache_hits_total{{{SEL_MODEL}}}[{RI}]))"
    misses = f"sum(rate(streamsynth_llm_cache_misses_total{{{SEL_MODEL}}}[{RI}]))"
    lay.panel(
        "Cache hit ratio",
        [(f"({hits} or vector(0)) / (({hits} or vector(0)) + {misses})", "hit ratio")],
        "percentunit",
        "Requests answered from the response cache.",
    )
    lay.panel(
        "Response cache entries and evictions",
        [
            (f"sum by (instance) (streamsynth_llm_cache_entries{{{SEL}}})", "entries"),
            (
                _or_zero(
                    _rate("streamsynth_llm_cache_evictions_total", SEL, "instance"),
                    f"sum by (instance) (streamsynth_llm_cache_entries{{{SEL}}})",
                ),
                "evictions / s",
            ),
        ],
        "short",
        "Answers held (bounded by llm.cache.max_entries) and evicted to stay within it.",
    )
    lay.panel(
        "Cost per hour",
        [
            (
                _rate("streamsynth_llm_cost_usd_total", SEL_MODEL, "model") + " * 3600",
                "{{model}}",
            )
        ],
        "currencyUSD",
        "Spend rate from the configured per-model prices.",
    )
    lay.panel(
        "Tokens per request p50 / p95",
        [
            (
                f"histogram_quantile({q}, sum by (gen_ai_token_type, le) "
                f"(rate(gen_ai_client_token_usage_bucket{{{SEL_GENAI}}}[{RI}])))",
                f"p{round(q * 100)} {{{{gen_ai_token_type}}}}",
            )
            for q in (0.5, 0.95)
        ],
        "short",
        "OTel GenAI token usage per operation.",
    )
    inflight = f"max by (endpoint) (streamsynth_llm_inflight_requests{{{SEL}}})"
    lay.panel(
        "Circuit breaker open",
        [(_or_zero(f"max by (endpoint) (streamsynth_llm_circuit_open{{{SEL}}})", inflight),
          "{{endpoint}}")],
        "bool_on_off",
        "1 while an endpoint's breaker is open and requests fail fast.",
    )  # fmt: skip


#: vLLM's series come from the servers' own /metrics (their scrape job), so these
#: panels select by the variables too: keep the servers' job in $job to see them.
VLLM_SEL = SEL


def servers_row(lay: Layout) -> None:
    lay.row("Servers (vLLM /metrics)")
    lay.panel(
        "Server requests running / waiting",
        [
            (_gauge("vllm:num_requests_running", VLLM_SEL, "instance"), "running {{instance}}"),
            (_gauge("vllm:num_requests_waiting", VLLM_SEL, "instance"), "waiting {{instance}}"),
        ],
        "short",
        "Per server: the running batch (up to max_num_seqs) and its queue. Waiting > 0 "
        "with the client's limit at its knee means the fleet is full.",
    )
    hits = _rate("vllm:prefix_cache_hits_total", VLLM_SEL, "instance")
    queries = _rate("vllm:prefix_cache_queries_total", VLLM_SEL, "instance")
    lay.panel(
        "Server prefix-cache hit rate",
        [(f"{hits} / {queries}", "{{instance}}")],
        "percentunit",
        "Prompt tokens found in each server's prefix cache over those looked up.",
    )
    lay.panel(
        "Server generation tokens / s",
        [
            (_rate("vllm:generation_tokens_total", VLLM_SEL, "instance"), "{{instance}}"),
            (f"sum(rate(vllm:generation_tokens_total{{{VLLM_SEL}}}[{RI}]))", "fleet"),
        ],
        "short",
        "Output tokens each server generates (goodput, all clients), and the fleet's sum.",
    )


def model_group_rows(lay: Layout) -> None:
    """One row per model group (llm.models): its traffic, queues, routing and caches."""
    lay.row("Model group $model_group", repeat="model_group")
    group = 'model_group=~"$model_group"'
    member = f"streamsynth_llm_endpoint_group{{{SEL}, {group}}}"

    def of_group(expr: str) -> str:
        # Per-endpoint series kept only for the group's endpoints (the join's value is 1).
        return f"({expr} * on (job, instance, endpoint) group_left () {member})"

    lay.panel(
        "Group attempts / s by status",
        [(_rate("streamsynth_llm_requests_total", f'{SEL}, model=~"$model_group"', "status"),
          "{{status}}")],
        "reqps",
        "HTTP attempts to the group's replicas by outcome (the group is named after its model).",
        stack=True,
    )  # fmt: skip
    lay.panel(
        "Group queue wait p50 / p95 / p99 by stage",
        _quantiles("streamsynth_llm_queue_wait_seconds", f"{SEL}, {group}", "stage"),
        "s",
        "Time attempts waited in the client before being sent (rate budget, slot, global "
        "bound). A stage with a lower priority value gets the next free slot first.",
    )
    lay.panel(
        "Routed attempts / s by replica and route",
        [(_rate("streamsynth_llm_routed_total", f"{SEL}, {group}", "endpoint, route"),
          "{{route}} {{endpoint}}")],
        "reqps",
        "home: the stage's own replica (prefix affinity); spill: home was full; "
        "least_loaded: no affinity. A replica whose circuit opens loses its share to the "
        "others until it recovers.",
        stack=True,
    )  # fmt: skip
    lay.panel(
        "Group in-flight vs concurrency limit",
        [
            (f"sum by (endpoint) {of_group(f'streamsynth_llm_inflight_requests{{{SEL}}}')}",
             "in flight {{endpoint}}"),
            (f"sum by (endpoint) {of_group(f'streamsynth_llm_concurrency_limit{{{SEL}}}')}",
             "limit {{endpoint}}"),
        ],
        "short",
        "Each replica of the group: requests holding a slot against its own adaptive limit.",
    )  # fmt: skip
    cached = f'rate(streamsynth_llm_endpoint_prompt_tokens_total{{{SEL}, cached="true"}}[{RI}])'
    prompt = f"rate(streamsynth_llm_endpoint_prompt_tokens_total{{{SEL}}}[{RI}])"
    lay.panel(
        "Prefix-cache hit rate per replica (client view)",
        [(f"sum by (endpoint) {of_group(cached)} / sum by (endpoint) {of_group(prompt)}",
          "{{endpoint}}")],
        "percentunit",
        "Prompt tokens the replica served from its prefix cache, from the answers' "
        "usage.prompt_tokens_details.cached_tokens (servers that report it).",
    )  # fmt: skip
    vllm = f'{VLLM_SEL}, model_name=~"$model_group"'
    hits = _rate("vllm:prefix_cache_hits_total", vllm, "instance")
    queries = _rate("vllm:prefix_cache_queries_total", vllm, "instance")
    lay.panel(
        "Server prefix-cache hit rate per replica (vLLM)",
        [(f"{hits} / {queries}", "{{instance}}")],
        "percentunit",
        "The group's servers' own count (vllm:prefix_cache_hits / queries), when they are "
        "scraped; model_name is the group's model.",
    )


def kafka_row(lay: Layout) -> None:
    lay.row("Kafka")
    lag = f"streamsynth_consumer_lag_records{{{SEL}}}"
    lay.panel(
        "Consumer lag (records)",
        [(f"sum by (topic) ({lag})", "{{topic}}")],
        "short",
        "High watermark minus committed offset, summed over partitions.",
    )
    lay.panel(
        "Lag trend (records / s)",
        [(f"sum by (topic) (deriv({lag}[5m]))", "{{topic}}")],
        "short",
        "Positive while lag grows: the workers fall behind the producers.",
    )
    lay.panel(
        "Offset commits / s",
        [(_rate("streamsynth_offset_commits_total", SEL, "status"), "{{status}}")],
        "ops",
        "Commits by status (ok/failed).",
    )  # fmt: skip
    lay.panel(
        "Rebalances",
        [(f"sum by (event) (increase(streamsynth_rebalances_total{{{SEL}}}[{RI}]))", "{{event}}")],
        "short",
        "Partition assignments and revocations.",
    )
    lay.panel(
        "Partitions assigned / paused",
        [
            (_gauge("streamsynth_partitions_assigned", SEL, "instance"), "assigned {{instance}}"),
            (_gauge("streamsynth_partitions_paused", SEL, "instance"), "paused {{instance}}"),
        ],
        "short",
        "Paused partitions mean backpressure: too many records in flight.",
    )  # fmt: skip
    stage_rate = _rate("streamsynth_stage_duration_seconds_count", SEL_STAGE, "stage")
    lay.panel(
        "DLQ records / s",
        [
            (_rate("streamsynth_records_dlq_total", SEL_STAGE, "stage, reason"),
             "{{stage}} {{reason}}"),
            (_or_zero(_rate("streamsynth_records_dlq_total", SEL_STAGE, "stage"), stage_rate),
             "{{stage}} total"),
        ],
        "reqps",
        "Records sent to the dead-letter topic, by stage and reason.",
    )  # fmt: skip
    lay.panel(
        "Uncommitted records",
        [(f"sum by (topic) (streamsynth_uncommitted_records{{{SEL}}})", "{{topic}}")],
        "short",
        "Fetched past the committed offset: what a crash would re-process.",
    )


def process_row(lay: Layout) -> None:
    lay.row("Process")
    lay.panel(
        "CPU",
        [(f"rate(process_cpu_seconds_total{{{SEL}}}[{RI}])", "{{instance}}")],
        "percentunit",
        "CPU seconds per second (1 = one core).",
    )
    lay.panel(
        "Resident memory",
        [(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")],
        "bytes",
        "RSS of each worker.",
    )
    lay.panel(
        "Event-loop lag",
        [(f"max by (instance) (streamsynth_event_loop_lag_seconds{{{SEL}}})", "{{instance}}")],
        "s",
        "How late a periodic callback ran: blocking code on the loop.",
    )
    lay.panel(
        "Workers up",
        [(f'up{{{SEL}}}', "{{instance}}")],
        "short",
        "Prometheus scrape health per worker.",
    )  # fmt: skip


def _query_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    lay = Layout()
    red_row(lay)
    stage_rows(lay)
    llm_row(lay)
    servers_row(lay)
    model_group_rows(lay)
    kafka_row(lay)
    process_row(lay)
    return {
        "uid": "streamsynth",
        "title": "streamsynth",
        "description": "Kafka-to-LLM synthetic data workers: RED per stage, LLM, Kafka, process.",
        "tags": ["streamsynth", "kafka", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                },
                _query_var("job", "Job", "label_values(streamsynth_build_info, job)"),
                _query_var(
                    "instance",
                    "Instance",
                    'label_values(streamsynth_build_info{job=~"$job"}, instance)',
                ),
                _query_var(
                    "stage",
                    "Stage",
                    # A stage whose when: skips every row never runs: list skipped ones too.
                    'label_values({__name__=~"streamsynth_stage_duration_seconds_count'
                    '|streamsynth_records_skipped_total", job=~"$job"}, stage)',
                ),
                _query_var(
                    "model",
                    "Model",
                    'label_values(streamsynth_llm_requests_total{job=~"$job"}, model)',
                ),
                _query_var(
                    "model_group",
                    "Model group",
                    'label_values(streamsynth_llm_endpoint_group{job=~"$job"}, model_group)',
                ),
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Annotations & Alerts",
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "type": "dashboard",
                }
            ]
        },
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
