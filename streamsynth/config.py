"""The worker's configuration: one YAML file, overridable from the environment.

Environment variables take precedence over the file: ``STREAMSYNTH_`` prefix,
nested keys joined with ``__`` (``STREAMSYNTH_LLM__MAX_CONCURRENCY=64``).
Validation happens once, at start-up; :func:`load_settings` turns pydantic's
errors into a :class:`ConfigError` whose lines name each bad field by its path.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamsynth.checks import (
    check_bootstrap_servers,
    check_prompt_template,
    check_sasl,
    secret_values,
    yaml_error_message,
)
from streamsynth.errors import ConfigError as ConfigError  # re-exported: its old home
from streamsynth.llm.types import GenerationConfig
from streamsynth.redact import is_secret_field, redact, register_secret
from streamsynth.stages.nemotron_cc.compat import CuratorCompat
from streamsynth.stages.nemotron_cc.tasks import TASK_NAMES

if TYPE_CHECKING:
    from streamsynth.engine.graph import StageGraph

#: A stage's ``task``: one of the Nemotron-CC registry's names, or "custom" (own prompt).
TASK_CHOICES: tuple[str, ...] = (*TASK_NAMES, "custom")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str
    group_id: str = "streamsynth"
    client_id: str = "streamsynth"
    input_topic: str | None = None
    input_topics: list[str] = Field(default_factory=list)
    dlq_topic: str
    filtered_topic: str | None = None
    #: Static membership (KIP-345): a stable id per replica avoids a rebalance per restart.
    group_instance_id: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    fetch_max_bytes: int = Field(default=52_428_800, ge=1024)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    linger_ms: int = Field(default=5, ge=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: Password of an encrypted ssl_keyfile.
    ssl_password: SecretStr | None = None
    #: exactly_once: each record's outputs and the offset commit covering it are written in
    #: one Kafka transaction per input partition (needs a broker with transactions).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: exactly_once: transactional ids are "{prefix}.{topic}.{partition}" (default: group_id).
    transactional_id_prefix: str | None = None
    transaction_timeout_ms: int = Field(default=60_000, ge=1_000, le=900_000)
    #: exactly_once: commit before the interval once held outputs pass this many bytes.
    transaction_max_bytes: int = Field(default=16_777_216, ge=65_536)

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        check_bootstrap_servers(value)
        return value

    @model_validator(mode="after")
    def _topics(self) -> KafkaSettings:
        topics = list(self.input_topics)
        if self.input_topic and self.input_topic not in topics:
            topics.insert(0, self.input_topic)
        if not topics:
            raise ValueError("set input_topic or input_topics")
        self.input_topics = topics
        if self.dlq_topic in topics:
            raise ValueError("dlq_topic: must differ from the input topics")
        if self.filtered_topic is not None:
            if self.filtered_topic in topics:
                raise ValueError("filtered_topic: is an input topic (records would loop back)")
            if self.filtered_topic == self.dlq_topic:
                raise ValueError("filtered_topic: must differ from dlq_topic")
        check_sasl(  # the rule KafkaConnection applies
            self.security_protocol,
            self.sasl_mechanism,
            self.sasl_username,
            has_password=self.sasl_password is not None,
        )
        return self


class RecordSettings(_Section):
    id_field: str = "id"
    text_field: str = "text"
    #: Larger values go to the DLQ unread: a 10 MB prompt is a mistake, not a document.
    max_record_bytes: int = Field(default=1_048_576, ge=1)


class ModelPrice(_Section):
    input_per_million: float = Field(ge=0.0)
    output_per_million: float = Field(ge=0.0)


def default_cache_path() -> Path:
    """The response cache's file in the user's cache directory (XDG on Linux, via
    platformdirs), never in the working directory; deploy files point it at a volume."""
    from platformdirs import user_cache_path

    return user_cache_path("streamsynth") / "cache.sqlite3"


class CacheSettings(_Section):
    kind: Literal["sqlite", "memory", "none"] = "sqlite"
    path: Path = Field(default_factory=default_cache_path)
    memory_entries: int = Field(default=10_000, ge=0)
    #: The SQLite file's bound (least recently used answers are evicted beyond it).
    max_entries: int = Field(default=1_000_000, ge=1)


def _checked_urls(base_url: str | None, base_urls: list[str]) -> list[str]:
    """``base_url`` and ``base_urls`` as one list (no trailing slash), each URL checked."""
    urls = list(base_urls)
    if base_url and base_url not in urls:
        urls.insert(0, base_url)
    for url in urls:
        where = "base_url" if url == base_url else "base_urls"
        if not url.startswith(("http://", "https://")):
            # Quoted redacted: ftp://user:KEY@host must not bring KEY into the error.
            raise ValueError(f"{where}: {redact(url)!r} must start with http:// or https://")
        if "@" in url.split("//", 1)[1].split("/", 1)[0]:
            # The URL becomes a metrics label and a log field: no credentials in it.
            raise ValueError(f"{where}: a base url must not carry credentials; use api_key_env")
    return [u.rstrip("/") for u in urls]


def _checked_metrics_urls(given: dict[str, str], base_urls: list[str]) -> dict[str, str]:
    """``server_metrics_urls``: keyed by a configured base URL, each an http(s) URL."""
    checked: dict[str, str] = {}
    for base, url in given.items():
        key = base.rstrip("/")
        if key not in base_urls:
            raise ValueError(f"server_metrics_urls: {redact(base)!r} is none of the base urls")
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"server_metrics_urls: {redact(url)!r} must start with http:// or https://"
            )
        if "@" in url.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("server_metrics_urls: a metrics url must not carry credentials")
        checked[key] = url
    return checked


class ModelGroupSettings(_Section):
    """One entry of ``llm.models``: a model served by its own replicas, with its own
    limits. Unset fields take the ``llm`` section's value."""

    base_url: str | None = None
    base_urls: list[str] = Field(default_factory=list)
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    min_concurrency: int | None = Field(default=None, ge=1)
    adaptive_concurrency: bool | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    breaker_failures: int | None = Field(default=None, ge=1)
    breaker_reset_s: float | None = Field(default=None, gt=0)
    context_tokens: int | None = Field(default=None, ge=1)
    #: Send each stage's ``priority`` as vLLM's body field (only for servers started with
    #: ``--scheduling-policy priority``: the others reject a non-zero value).
    send_priority: bool | None = None

    @model_validator(mode="after")
    def _urls(self) -> ModelGroupSettings:
        self.base_urls = _checked_urls(self.base_url, self.base_urls)
        if not self.base_urls:
            raise ValueError("base_urls: a model group needs base_url or base_urls")
        given = [self.api_key is not None, bool(self.api_key_env), self.api_key_file is not None]
        if sum(given) > 1:
            raise ValueError("set only one of api_key, api_key_env, api_key_file")
        return self


#: The openai SDK transport's depth limit: its throughput collapses beyond it (httpx's
#: pool bookkeeping; measured by ``streamsynth bench client-throughput``).
OPENAI_MAX_CONCURRENCY = 256


class LLMSettings(_Section):
    base_url: str | None = None
    base_urls: list[str] = Field(default_factory=list)
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    #: The model of stages that set none (with ``models``: a group name; default the first).
    model: str = ""
    #: Model groups by model name: each its own replicas, limits and breaker. A stage's
    #: ``model`` picks its group. ``base_url(s)`` + ``model`` is the one-group shorthand.
    models: dict[str, ModelGroupSettings] = Field(default_factory=dict)
    #: prefix_affinity: a stage's requests go to one replica (its prompt prefix stays in
    #: that replica's cache), spilling to the least loaded one when it is full.
    routing: Literal["prefix_affinity", "least_loaded"] = "prefix_affinity"
    #: Send each stage's priority in the body (vLLM ``--scheduling-policy priority``).
    send_priority: bool = False
    #: Attempts in flight over every group together (None: only the per-replica bounds).
    global_max_concurrency: int | None = Field(default=None, ge=1)
    provider: str = "openai"
    #: http1: our lean HTTP/1.1 pool (the least CPU per request); aiohttp: aiohttp's
    #: ClientSession; openai: the official SDK (refused above 256 in flight).
    transport: Literal["http1", "aiohttp", "openai"] = "http1"
    #: Per endpoint. vLLM runs up to 1024 sequences at once on an H100/H200 by default
    #: (``max_num_seqs``); the adaptive limit ramps up from 32 and settles at the knee.
    max_concurrency: int = Field(default=1024, ge=1)
    min_concurrency: int = Field(default=4, ge=1)
    adaptive_concurrency: bool = True
    #: auto: the adaptive limit reads each endpoint's vLLM gauges from its /metrics
    #: (requests waiting at the server mark the knee; latency for those without);
    #: off: client latency alone.
    server_metrics: Literal["auto", "off"] = "auto"
    #: A base URL's metrics URL where it is not the base URL without /v1, + /metrics.
    server_metrics_urls: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=120.0, gt=0)
    deadline_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    learn_rate_limits: bool = True
    breaker_failures: int = Field(default=20, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    endpoint_cooldown_s: float = Field(default=10.0, ge=0)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    #: The model's context in tokens (one number, or per model name): turns on the
    #: guard that shrinks max_tokens to fit, or dead-letters what cannot fit unsent.
    context_tokens: int | dict[str, int] | None = None

    @field_validator("context_tokens")
    @classmethod
    def _positive_context(cls, value: int | dict[str, int] | None) -> Any:
        sizes = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(size < 1 for size in sizes):
            raise ValueError("context_tokens must be >= 1")
        return value

    _groups: dict[str, LLMSettings] = PrivateAttr(default_factory=dict)

    def context_for(self, model: str) -> int | None:
        """The context of ``model`` (None: no guard for it)."""
        group = self.models.get(model)
        if group is not None and group.context_tokens is not None:
            return group.context_tokens
        if isinstance(self.context_tokens, dict):
            return self.context_tokens.get(model)
        return self.context_tokens

    @model_validator(mode="after")
    def _endpoints(self) -> LLMSettings:
        urls = _checked_urls(self.base_url, self.base_urls)
        if not urls and not self.models:
            raise ValueError("set base_url or base_urls (or llm.models)")
        self._groups = self._resolve_groups(urls)
        # Every replica of every group: what start-up probes and `config check` show.
        self.base_urls = list(dict.fromkeys(u for g in self._groups.values() for u in g.base_urls))
        if self.min_concurrency > self.max_concurrency:
            raise ValueError("min_concurrency must not exceed max_concurrency")
        self.server_metrics_urls = _checked_metrics_urls(self.server_metrics_urls, self.base_urls)
        for group in self._groups.values():  # copies made before the keys were normalised
            group.server_metrics_urls = self.server_metrics_urls
        for group in [self, *self._groups.values()]:
            if group.transport == "openai" and group.max_concurrency > OPENAI_MAX_CONCURRENCY:
                raise ValueError(
                    f"max_concurrency: the openai transport collapses above "
                    f"{OPENAI_MAX_CONCURRENCY} in flight (bench client-throughput: 294 req/s "
                    "at 256, 50 at 4,096); set max_concurrency <= "
                    f"{OPENAI_MAX_CONCURRENCY} or use transport aiohttp"
                )
        given = [self.api_key is not None, bool(self.api_key_env), self.api_key_file is not None]
        if sum(given) > 1:
            raise ValueError("set only one of api_key, api_key_env, api_key_file")
        return self

    def _resolve_groups(self, urls: list[str]) -> dict[str, LLMSettings]:
        """Each model group as a complete LLM section (the group's values over ours)."""
        if urls:  # the shorthand: base_url(s) + model is one group
            if not self.model:
                raise ValueError("model: Field required")
            if self.model in self.models:
                raise ValueError("model: names an llm.models group, and base_url(s) are set too")
        elif not self.model:
            self.model = next(iter(self.models))
        elif self.model not in self.models:
            raise ValueError(f"model: {self.model!r} is none of the llm.models groups")
        groups: dict[str, LLMSettings] = {}
        if urls:
            groups[self.model] = self.model_copy(update={"base_urls": urls, "models": {}})
        for name, group in self.models.items():
            given = group.model_dump(exclude_none=True, exclude={"base_url"})
            if any(k in given for k in ("api_key", "api_key_env", "api_key_file")):
                given.update(api_key=group.api_key, api_key_env=group.api_key_env)
                given["api_key_file"] = group.api_key_file
            groups[name] = self.model_copy(
                update={**given, "model": name, "base_url": None, "models": {}}
            )
            if groups[name].min_concurrency > groups[name].max_concurrency:
                raise ValueError(f"min_concurrency exceeds max_concurrency in group {name!r}")
        return groups

    def groups(self) -> dict[str, LLMSettings]:
        """The model groups by model name, each as a complete LLM section of one group."""
        return dict(self._groups)

    def resolve_api_key(self) -> str:
        """The key from whichever source is configured ("EMPTY" when none: local servers)."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if value is None:
                raise ConfigError(f"llm.api_key_env: environment variable {self.api_key_env} unset")
            return value
        if self.api_key_file is not None:
            try:
                return self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"llm.api_key_file: cannot read: {exc.strerror}") from exc
        return "EMPTY"


class GenerationOverrides(_Section):
    """Per-stage generation settings; unset fields keep the task's defaults."""

    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    extra_body: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def apply(self, base: GenerationConfig) -> GenerationConfig:
        changes = self.model_dump(exclude_unset=True)
        return base.model_copy(update=changes) if changes else base


class StageSettings(_Section):
    #: Checked against TASK_CHOICES (derived from the task registry) by _known_task.
    task: str = Field(json_schema_extra={"enum": list(TASK_CHOICES)})
    name: str | None = None
    output_topic: str
    input_field: str | None = None
    output_field: str | None = None
    system_prompt: str | None = None
    prompt: str | None = None
    model: str | None = None
    #: Who gets the next free slot of the model group's bound: lower first.
    priority: int = 0
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)
    tokenizer: str = "approx"
    #: Whether token counts include the special tokens (BOS) the tokenizer adds;
    #: None follows the tokenizer's own default, as NeMo Curator does.
    count_special_tokens: bool | None = None
    #: Nemotron-CC tasks: "exact" reproduces NeMo Curator 1.4.0 bit for bit (its bugs
    #: included); "fixes" applies the documented fixes (README, Nemotron-CC).
    curator_compat: CuratorCompat = "fixes"
    seed: int = 0
    #: Routing: field -> {operator: value} on the input record (or, chained, the upstream
    #: row); every condition must hold, else the row is skipped for this stage.
    #: Checked by Settings.stage_graph (streamsynth.engine.graph), which names the field.
    when: dict[str, Any] | None = None
    #: Chaining: run on every output row of the named stage instead of the input record
    #: (input_field then defaults to that stage's output field). One name: no fan-in.
    input_from: str | list[str] | None = None
    #: Structured answers (custom stages): OpenAI's response_format, sent unchanged; the
    #: answer is parsed and validated against it, re-asked up to parse_retries times.
    response_format: dict[str, Any] | None = None
    parse_retries: int = Field(default=2, ge=0)
    #: An answer cut at max_tokens: keep it, filter it or dead-letter it. Unset: custom
    #: stages keep it; Nemotron-CC tasks apply Curator's own truncation filter.
    on_truncated: Literal["keep", "filter", "dlq"] | None = None
    #: The context guard's floor: fewer answer tokens than this left -> not sent.
    min_output_tokens: int | None = Field(default=None, ge=1)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASK_CHOICES:
            raise ValueError(f"unknown task {value!r}; expected one of: {', '.join(TASK_CHOICES)}")
        return value

    @field_validator("prompt")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            check_prompt_template(value)  # the rule SyntheticStage applies
        return value

    @model_validator(mode="after")
    def _custom(self) -> StageSettings:
        if self.task == "custom":
            if not self.prompt:
                raise ValueError("prompt: a custom stage needs a template with {document}")
            if not self.output_field:
                raise ValueError("a custom stage needs 'output_field'")
        if self.response_format is not None:
            if self.task != "custom":
                raise ValueError("response_format is for custom stages only")
            check_response_format(self.response_format)
        if self.task != "custom" and self.on_truncated == "keep":
            # Curator's post-processing drops every truncated answer of these tasks.
            raise ValueError("on_truncated: keep is for custom stages; tasks filter or dlq")
        return self

    @property
    def stage_name(self) -> str:
        return self.name or (self.output_field if self.task == "custom" else self.task) or "custom"


def check_response_format(value: dict[str, Any]) -> None:
    """Raise ValueError unless ``value`` is one of OpenAI's response_format shapes."""
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise ValueError("response_format.type must be json_object, json_schema or text")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError("response_format.json_schema needs a 'name' (and a 'schema')")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise ValueError("response_format.json_schema.schema must be a JSON Schema object")
    if not isinstance(spec.get("strict", False), bool):
        raise ValueError("response_format.json_schema.strict must be true or false")
    from jsonschema import SchemaError, validators  # only configs with a schema pay for it

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"response_format.json_schema.schema is invalid: {exc.message}") from None


class WorkerSettings(_Section):
    max_batch_records: int = Field(default=500, ge=1)
    max_batch_wait_ms: int = Field(default=100, ge=0)
    #: Records fetched and in the stages; as many again may await their outputs' acks
    #: (kafka/inflight.py). When either part reaches it, partitions are paused.
    max_inflight_records: int = Field(default=4_096, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    shutdown_timeout_s: float = Field(default=60.0, ge=0)
    #: auto (default): uvloop where installed (a dependency everywhere but Windows), a
    #: fraction of asyncio's CPU per request; else asyncio. uvloop raises where asyncio
    #: drops a write to a closed connection: kafka/compat.py turns that into the
    #: connection error aiokafka's callers expect.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9400, ge=0, le=65535)
    summary_interval_s: float = Field(default=10.0, ge=0)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


_file_data: ContextVar[dict[str, Any] | None] = ContextVar("_file_data", default=None)


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get() or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSYNTH_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaSettings
    record: RecordSettings = Field(default_factory=RecordSettings)
    llm: LLMSettings
    stages: list[StageSettings] = Field(min_length=1)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    def stage_graph(self) -> StageGraph:
        """The stages' routing and chaining graph; :class:`ConfigError` names a bad field."""
        # Imported here: the engine pulls in pyarrow, which `streamsynth --help` should not.
        from streamsynth.engine.graph import GraphError, GraphNode, StageGraph

        nodes = [
            GraphNode(s.stage_name, s.when, s.input_from, path=f"stages.{i}")
            for i, s in enumerate(self.stages)
        ]
        try:
            return StageGraph.build(nodes)
        except GraphError as exc:
            raise ConfigError(f"invalid configuration:\n  {exc}") from None

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Settings:
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            if stage.stage_name in seen:
                raise ValueError(f"two stages are named {stage.stage_name!r}; set 'name'")
            seen.add(stage.stage_name)
            if stage.output_topic in self.kafka.input_topics:
                raise ValueError(f"stages.{i}.output_topic: is an input topic")
            if stage.output_topic == self.kafka.dlq_topic:
                raise ValueError(f"stages.{i}.output_topic: is the dlq_topic")
            if stage.output_topic == self.kafka.filtered_topic:
                raise ValueError(f"stages.{i}.output_topic: is the filtered_topic")
            if self.llm.models and stage.model and stage.model not in self.llm.groups():
                known = ", ".join(self.llm.groups())
                raise ValueError(f"stages.{i}.model: unknown model group {stage.model!r} ({known})")
        return self


#: A validator names the field it judged inside its section: "dlq_topic: must differ...".
_FIELD_PREFIX = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): ")


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the field's dotted path; never a secret."""
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        named = _FIELD_PREFIX.match(msg)
        if named:
            parts.append(named.group(1))
            msg = msg[named.end() :]
        loc = ".".join(parts) or "(top level)"
        lines.append(f"{loc}: {redact(msg)}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _register_secrets(data: dict[str, Any]) -> None:
    """Every secret-bearing value of the file and the environment is redacted from now on,
    so no error about the config (or anything later) can quote one."""
    for value in secret_values(data):
        register_secret(value)
    for name, value in os.environ.items():
        if name.startswith("STREAMSYNTH_") and is_secret_field(name):
            register_secret(value)


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Validate ``data`` (as read from YAML) with environment overrides applied."""
    _register_secrets(data)
    token = _file_data.set(data)
    try:
        settings = Settings()  # type: ignore[call-arg]  # fields come from the sources
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    finally:
        _file_data.reset(token)
    settings.stage_graph()  # cycles, unknown upstreams, fan-in, bad conditions
    if settings.kafka.sasl_password is not None:
        register_secret(settings.kafka.sasl_password.get_secret_value())
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML config file; raise :class:`ConfigError` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {yaml_error_message(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: the top level must be a mapping")
    return settings_from_dict(data)


EXAMPLE_CONFIG = """\
# streamsynth worker configuration. Environment variables override any key:
# STREAMSYNTH_<SECTION>__<KEY>, e.g. STREAMSYNTH_LLM__MAX_CONCURRENCY=64.
kafka:
  bootstrap_servers: 127.0.0.1:9092
  group_id: streamsynth
  input_topic: documents
  dlq_topic: documents.dlq
  # filtered_topic: documents.filtered     # optional: records the task filters drop
  # group_instance_id: worker-0            # static membership
  # security_protocol: SASL_SSL
  # sasl_mechanism: SCRAM-SHA-512
  # sasl_username: streamsynth
  # sasl_password: ...                     # prefer STREAMSYNTH_KAFKA__SASL_PASSWORD
record:
  id_field: id
  text_field: text
  max_record_bytes: 1048576
llm:
  base_url: http://127.0.0.1:8000/v1       # or base_urls: [..] for a pool of replicas
  api_key_env: OPENAI_API_KEY              # or api_key / api_key_file
  model: meta/llama-3.3-70b-instruct
  max_concurrency: 1024                    # per endpoint (vLLM's max_num_seqs on H100/H200)
  timeout_s: 120
  max_attempts: 6
  # rpm: 600
  # tpm: 1000000
  # context_tokens: 131072                 # guard: shrink max_tokens to fit, or DLQ context_length
  # routing: prefix_affinity               # a stage's requests stay on one replica (prefix cache)
  # models:                                # several models, each on its own servers and limits
  #   meta/llama-3.1-8b-instruct: {base_url: http://127.0.0.1:8001/v1, max_concurrency: 512}
  cache:
    kind: sqlite                           # path: default ~/.cache/streamsynth/cache.sqlite3
    max_entries: 1000000                   # least recently used answers are evicted beyond it
  prices:
    meta/llama-3.3-70b-instruct: {input_per_million: 0.6, output_per_million: 0.6}
stages:
  - task: diverse_qa
    output_topic: synth.diverse_qa
    generation: {temperature: 0.5, top_p: 0.9, max_tokens: 600}
    # model: meta/llama-3.1-8b-instruct    # a group of llm.models
    # priority: 10                         # lower values get free slots first (default 0)
  - task: custom
    system_prompt: "You are a careful technical writer."
    prompt: "Summarize the following text in three sentences:\\n\\n{document}"
    output_field: summary
    output_topic: synth.summary
  # - task: custom                         # structured answers, validated against the schema
  #   prompt: "Rate this text as JSON:\\n\\n{document}"
  #   output_field: rating
  #   output_topic: synth.rating
  #   response_format:
  #     type: json_schema
  #     json_schema:
  #       name: rating
  #       strict: true
  #       schema: {type: object, properties: {score: {type: integer}}, required: [score]}
  #   parse_retries: 2                     # then DLQ with reason invalid_output
  #   on_truncated: dlq                    # keep (default) | filter | dlq
worker:
  max_batch_records: 500
  max_inflight_records: 4096
  commit_interval_s: 1.0
  drain_timeout_s: 30
  shutdown_timeout_s: 60
metrics:
  host: 0.0.0.0
  port: 9400
logging:
  level: INFO
  format: json
"""
