"""The root of every error streamsynth raises, and the tree under it.

``except StreamsynthError`` catches anything of ours. Each class says, as class
attributes, how callers should treat it: ``error_type`` is a short bounded label
(the DLQ ``reason`` header and the metrics use it; never free text) and
``retryable`` says whether trying again may succeed (the ``retry`` column). The
families live next to the code that raises them; the whole hierarchy::

    class                                           error_type                retry
    StreamsynthError                                streamsynth               no
    ├── ConfigError (ValueError)                    config                    no
    │   └── TransactionsUnsupportedError            transactions_unsupported  no
    ├── BrokerUnavailableError (RuntimeError)       broker_unavailable        yes
    ├── SinkClosedError (RuntimeError)              sink_closed               no
    ├── PartitionFencedError (RuntimeError)         producer_fenced           no
    ├── TransactionUnresolvedError (RuntimeError)   transaction_unresolved    no
    │   └── TransactionTimedOutError                transaction_timed_out     no
    ├── EngineError                                 engine                    no
    │   ├── MissingColumnError (KeyError)           missing_column            no
    │   ├── StageConfigError (ValueError)           stage_config              no
    │   ├── GraphError                              graph                     no
    │   ├── PostProcessingError                     postprocess               no
    │   ├── InvalidOutputError                      invalid_output            no
    │   └── TruncatedOutputError                    truncated                 no
    ├── TokenizerUnavailableError (RuntimeError)    tokenizer_unavailable     no
    ├── LLMError                                    llm_error                 no
    │   ├── LLMConnectionError                      connection                yes
    │   ├── LLMTimeoutError                         timeout                   yes
    │   ├── DeadlineExceededError                   deadline                  no
    │   ├── MalformedResponseError                  malformed                 yes
    │   │   ├── EmptyChoicesError                   empty_choices             yes
    │   │   └── EmptyOutputError                    empty_output              yes
    │   ├── CircuitOpenError                        circuit_open              yes
    │   │   └── AllCircuitsOpenError                circuit_open              yes
    │   └── APIStatusError                          status                    no
    │       ├── BadRequestError                     http_400                  no
    │       │   └── ContextLengthError              context_length            no
    │       ├── AuthenticationError                 http_401                  no
    │       ├── PermissionDeniedError               http_403                  no
    │       ├── NotFoundError                       http_404                  no
    │       ├── RequestTimeoutError                 http_408                  yes
    │       ├── ConflictError                       http_409                  yes
    │       ├── UnprocessableEntityError            http_422                  no
    │       ├── RateLimitError                      http_429                  yes
    │       └── ServerError                         http_5xx                  yes
    ├── ModelUnavailable                            model_unavailable         no
    ├── QueueFullError                              queue_full                yes
    ├── PriorityNotEnabledError (ValueError)        priority_not_enabled      no
    ├── CliError                                    cli                       no
    └── ToolUnavailable (RuntimeError)              tool_unavailable          no

Homes: the root, ConfigError (re-exported by config.py) and BrokerUnavailableError here;
TransactionsUnsupportedError, PartitionFencedError, TransactionUnresolvedError and
TransactionTimedOutError in kafka/transactions.py; SinkClosedError in kafka/sink.py;
EngineError's family in engine/errors.py (GraphError in engine/graph.py);
TokenizerUnavailableError in stages/nemotron_cc/tokenizer.py; LLMError's family in
llm/errors.py; ModelUnavailable in local/model_server.py; QueueFullError and
PriorityNotEnabledError (the simulator's replicas) in local/serving.py; CliError in
cli/errors.py; ToolUnavailable in testing/tools.py.

Foreign errors (aiohttp's, the openai SDK's, aiokafka's) are mapped into this
tree where they enter: the LLM transports map theirs to :class:`LLMError`
subclasses by type and status, never by message text.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BrokerUnavailableError", "ConfigError", "StreamsynthError"]


class StreamsynthError(Exception):
    """Base of every error raised by streamsynth."""

    #: A short, bounded label for metrics and DLQ headers (never free text).
    error_type: ClassVar[str] = "streamsynth"
    #: Whether trying the same thing again may succeed.
    retryable: ClassVar[bool] = False


class ConfigError(StreamsynthError, ValueError):
    """The configuration is invalid; the message names the bad field by its path.

    Raised at load time, before any connection is made; the process exits 2.
    """

    error_type = "config"


class BrokerUnavailableError(StreamsynthError, RuntimeError):
    """No Kafka broker could be reached (or, for the embedded one, started)."""

    error_type = "broker_unavailable"
    retryable = True
