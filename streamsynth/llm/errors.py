"""The exception hierarchy of the LLM layer.

Retry decisions are made from these types (and the HTTP status they carry),
never from message text. ``retryable`` is a class attribute so that the retry
loop can decide without ``isinstance`` chains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from streamsynth.errors import StreamsynthError
from streamsynth.redact import scrub

#: Error messages built from a server's answer are cut to this many characters.
_MAX_MESSAGE_CHARS = 500


class LLMError(StreamsynthError):
    """Base of every error raised by a streamsynth LLM client (the tree: streamsynth.errors)."""

    error_type = "llm_error"

    def __init__(self, message: str, *, attempts: int = 1, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.endpoint = endpoint


class LLMConnectionError(LLMError):
    """The server could not be reached or dropped the connection."""

    retryable = True
    error_type = "connection"


class LLMTimeoutError(LLMError):
    """One attempt exceeded its timeout."""

    retryable = True
    error_type = "timeout"


class DeadlineExceededError(LLMError):
    """The request's total time budget (all attempts and backoff) ran out."""

    error_type = "deadline"


class MalformedResponseError(LLMError):
    """The server answered 2xx with a body that is not a valid chat completion."""

    retryable = True
    error_type = "malformed"


class EmptyChoicesError(MalformedResponseError):
    error_type = "empty_choices"


class EmptyOutputError(MalformedResponseError):
    """A 2xx answer without usable text: null content, tool calls only, or only whitespace."""

    error_type = "empty_output"


class CircuitOpenError(LLMError):
    """Every endpoint's circuit breaker is open; the request was not sent."""

    retryable = True
    error_type = "circuit_open"


class AllCircuitsOpenError(CircuitOpenError):
    """Every endpoint's circuit is open; ``reopens_at`` is the earliest reopening (clock time)."""

    def __init__(self, message: str, *, reopens_at: float) -> None:
        super().__init__(message)
        self.reopens_at = reopens_at


class APIStatusError(LLMError):
    """The server answered with a non-2xx status."""

    error_type = "status"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        retry_after_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        attempts: int = 1,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message, attempts=attempts, endpoint=endpoint)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})


class BadRequestError(APIStatusError):
    error_type = "http_400"


class ContextLengthError(BadRequestError):
    """The prompt plus ``max_tokens`` does not fit the model's context.

    Raised before sending, by a stage's context guard (``attempts == 0``, no status
    from a server: ``status_code`` 400 stands for what the server would answer), or
    for a server's 400 that says so. Never retried: the same request cannot fit later.
    """

    error_type = "context_length"


class AuthenticationError(APIStatusError):
    error_type = "http_401"


class PermissionDeniedError(APIStatusError):
    error_type = "http_403"


class NotFoundError(APIStatusError):
    error_type = "http_404"


class RequestTimeoutError(APIStatusError):
    retryable = True
    error_type = "http_408"


class ConflictError(APIStatusError):
    retryable = True
    error_type = "http_409"


class UnprocessableEntityError(APIStatusError):
    error_type = "http_422"


class RateLimitError(APIStatusError):
    retryable = True
    error_type = "http_429"


class ServerError(APIStatusError):
    retryable = True
    error_type = "http_5xx"


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds form only)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return None  # HTTP-date form: fall back to our own backoff
    return None


#: How servers word a context overflow in a 400: OpenAI ("maximum context length",
#: code context_length_exceeded), vLLM ("maximum context length" / "maximum model
#: length"), llama.cpp ("exceeds the available context size"), TGI ("must be <= N").
#: A status code alone cannot tell it from other bad requests, so the text decides
#: here -- the one place the LLM layer classifies by message, and only within 400s.
_CONTEXT_LENGTH_RE = re.compile(
    r"context[_ ]length|maximum model length|context size|context window"
    r"|max_new_tokens. must be <=|too many tokens",
    re.IGNORECASE,
)


def is_context_length_message(message: str) -> bool:
    """True when a 400's message says the request does not fit the model's context."""
    return _CONTEXT_LENGTH_RE.search(message) is not None


def status_error(
    status_code: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    endpoint: str | None = None,
) -> APIStatusError:
    """Build the typed error for an HTTP status."""
    headers = dict(headers or {})
    cls = _BY_STATUS.get(status_code)
    if status_code == 400 and is_context_length_message(message):
        cls = ContextLengthError
    if cls is None:
        cls = ServerError if status_code >= 500 else APIStatusError
    return cls(
        # Redacted before the cut: a key echoed across the cut must not leave a fragment.
        scrub(f"HTTP {status_code}: {message}", _MAX_MESSAGE_CHARS),
        status_code=status_code,
        retry_after_s=parse_retry_after(headers),
        headers=headers,
        endpoint=endpoint,
    )
