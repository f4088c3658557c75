"""The one place that decides what text may leave the process: logs, errors, DLQ headers, labels.

Two kinds of secret are removed, each replaced by ``[REDACTED]``:

- *registered* values: the LLM API key, the SASL password, any value of a
  secret-bearing config field (:func:`register_secret`; config loading does it).
  Each is matched in the forms it takes once something has printed it: as is,
  backslash- or JSON-escaped (``\\\\``, ``\\uXXXX``, ``\\"``), Python ``repr``/``ascii``
  escaped (``\\xNN``), as a ``bytes`` repr of its UTF-8 (how aiokafka's DEBUG log
  prints the SASL PLAIN auth bytes), percent-encoded, and each of those
  JSON-escaped once more (a JSON log line of a repr);
- *credential shapes* nobody registered: JWTs, ``Bearer`` tokens, ``sk-`` keys,
  ``api_key=...``/``password: ...`` pairs, and the user-info of a URL of any
  scheme (``ftp://user:KEY@host`` becomes ``ftp://[REDACTED]@host``).

:func:`scrub` is for free text from outside (an LLM server's error body): it also
removes long opaque tokens, and it redacts *before* cutting to length, so a
secret that straddles the cut cannot leave a fragment behind.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterable
from itertools import pairwise

__all__ = [
    "REDACTED",
    "SECRET_FIELD_WORDS",
    "clear_secrets",
    "is_secret_field",
    "redact",
    "register_secret",
    "scrub",
]

REDACTED = "[REDACTED]"

#: Values that look like secrets in config but are not (local servers take any key).
_NOT_SECRETS = frozenset({"", "EMPTY", "none", "None", "null"})
#: Shorter values are not registered: redacting "abc" everywhere would mangle ordinary text.
_MIN_SECRET_LEN = 4

#: A config field (or environment variable) whose name has one of these words holds a secret.
SECRET_FIELD_WORDS = frozenset(
    {"apikey", "password", "passwd", "pwd", "secret", "token", "credential", "credentials"}
)
#: ...unless it names where the secret is (``api_key_env``, ``api_key_file``).
_SOURCE_WORDS = frozenset({"env", "file", "path"})

_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9._~+/=\-]{6,}")
_KEY_VALUE = re.compile(
    r"(?i)(\b(?:api[_-]?key|password|passwd|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]{4,}"
)
#: ``scheme://user:password@`` or ``scheme://token@``, any scheme.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@\"'<>]+@")
#: Long opaque runs (keys, tokens) in free text from outside.
_LONG_TOKEN = re.compile(r"\b[A-Za-z0-9_\-]{40,}\b")

_lock = threading.Lock()
_secrets: set[str] = set()
_matcher: re.Pattern[str] | None = None


def is_secret_field(name: str) -> bool:
    """Whether a config field of this name holds a secret (its value is never quoted).

    Words are whole: ``sasl_password`` and ``STREAMSYNTH_LLM__API_KEY`` are secrets,
    ``max_tokens`` and ``api_key_env`` (the name of a variable) are not.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words or words[-1] in _SOURCE_WORDS:
        return False
    return any(w in SECRET_FIELD_WORDS for w in words) or ("api", "key") in pairwise(words)


def register_secret(value: str | None) -> None:
    """Redact ``value`` (in all its printed forms) everywhere from now on."""
    if value is None or value.strip() in _NOT_SECRETS or len(value) < _MIN_SECRET_LEN:
        return
    global _matcher
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _matcher = _compile(_secrets)


def clear_secrets() -> None:
    """Forget registered secrets (tests)."""
    global _matcher
    with _lock:
        _secrets.clear()
        _matcher = None


def _json_body(text: str, *, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)[1:-1]


def _printed_forms(value: str) -> set[str]:
    """``value`` as escaping, repr-ing, encoding and JSON-logging may have printed it."""
    raw = value.encode("utf-8")
    forms = {
        value,
        value.replace("\\", "\\\\"),
        _json_body(value, ascii_only=True),
        _json_body(value, ascii_only=False),
        repr(value)[1:-1],
        ascii(value)[1:-1],
        repr(raw)[2:-1],
        # Inside a longer bytes repr the quote may differ from the value's own repr.
        repr(raw + b"'\"")[2:-5],
        urllib.parse.quote(value, safe=""),
    }
    for form in list(forms):
        forms.add(_json_body(form, ascii_only=True))
    return {form for form in forms if len(form) >= _MIN_SECRET_LEN}


def _compile(secrets: Iterable[str]) -> re.Pattern[str]:
    forms: set[str] = set()
    for secret in secrets:
        forms |= _printed_forms(secret)
    # Longest first, so a form that contains another is removed whole.
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(form) for form in ordered))


def redact(text: str) -> str:
    """``text`` with registered secrets and credential shapes replaced by ``[REDACTED]``."""
    matcher = _matcher
    if matcher is not None:
        text = matcher.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    text = _SK_KEY.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _KEY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


def scrub(text: str, limit: int | None = None) -> str:
    """Free text from outside, redacted (long opaque tokens too), then cut to ``limit``."""
    text = _LONG_TOKEN.sub(REDACTED, redact(text))
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text
