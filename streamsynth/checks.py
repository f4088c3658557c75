"""Rules for configuration values, shared by config loading and the code that uses the values.

Each rule is checked once at load time (so a bad config stops start-up with exit 2
before any connection is made) by the same function the consumer of the value
relies on: a prompt template is judged here exactly as the stage that fills it
judges it. Every function raises ``ValueError`` with a message that never quotes a
secret; nothing here imports the rest of streamsynth.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterator, Mapping
from typing import Any

from streamsynth.redact import is_secret_field, redact

__all__ = [
    "check_bootstrap_servers",
    "check_prompt_template",
    "check_sasl",
    "secret_values",
    "template_fields",
    "yaml_error_message",
]

#: The one placeholder a prompt template may hold.
DOCUMENT_FIELD = "document"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)*\.?$")  # fmt: skip


def template_fields(template: str) -> set[str]:
    """The placeholder names of a ``str.format`` template (``ValueError`` if unbalanced)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_prompt_template(template: str) -> None:
    """A prompt must hold ``{document}``, no other placeholder, and balanced braces.

    ``{{`` and ``}}`` are literal braces, so a template with only ``{{document}}``
    has no placeholder at all.
    """
    try:
        fields = template_fields(template)
    except ValueError as exc:  # "Single '}' encountered in format string", ...
        raise ValueError(
            f"invalid template: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    if DOCUMENT_FIELD not in fields:
        raise ValueError("must contain the {document} placeholder ({{document}} is literal text)")
    unknown = sorted(fields - {DOCUMENT_FIELD})
    if unknown:
        shown = ", ".join("{" + name + "}" for name in unknown)
        raise ValueError(
            f"has unknown placeholders {shown}; only {{document}} is filled "
            "(double the braces for literal text)"
        )


def _check_host(host: str) -> None:
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])  # ValueError names the problem
        return
    if not _HOSTNAME.match(host):
        raise ValueError(f"{host!r} is not a host name or address")


def check_bootstrap_servers(value: str) -> None:
    """A comma-separated list of ``host:port`` (IPv6 as ``[addr]:port``)."""
    entries = [entry.strip() for entry in value.split(",")]
    if not any(entries):
        raise ValueError("is empty; give host:port[,host:port...]")
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        problem = None
        if not entry:
            problem = "has an empty entry (a stray comma?)"
        elif "://" in entry or "@" in entry:
            problem = f"entry {redact(entry)!r} must be host:port, without a scheme or user"
        elif not sep or not host:
            problem = f"entry {entry!r} must be host:port"
        elif not port.isdigit() or not 1 <= int(port) <= 65535:
            problem = f"entry {entry!r} has no valid port (1-65535)"
        else:
            try:
                _check_host(host)
            except ValueError as exc:
                problem = f"entry {entry!r}: {exc}"
        if problem is not None:
            raise ValueError(problem)


def check_sasl(
    protocol: str, mechanism: str | None, username: str | None, *, has_password: bool
) -> None:
    """A SASL_* security protocol needs a mechanism, a user name and a password."""
    if protocol.startswith("SASL") and not (mechanism and username and has_password):
        raise ValueError(
            "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password"
        )


def secret_values(data: Any, *, secret: bool = False) -> Iterator[str]:
    """Every value held under a secret-bearing key (``api_key``, ``sasl_password``...)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from secret_values(value, secret=secret or is_secret_field(str(key)))
    elif isinstance(data, list | tuple):
        for item in data:
            yield from secret_values(item, secret=secret)
    elif secret and data is not None and not isinstance(data, bool):
        yield str(data)


def yaml_error_message(exc: Exception) -> str:
    """What is wrong with a YAML text and where, without quoting the offending line.

    PyYAML's own message shows a snippet of the line, which may hold a key; here only
    the problem and its line/column are kept (credential shapes redacted too).
    """
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = str(problem) if problem else type(exc).__name__
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return redact(text)
