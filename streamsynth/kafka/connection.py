"""One Kafka connection (where the brokers are, how to authenticate) for every client.

Every aiokafka consumer, producer and admin client in streamsynth is built here:
the worker's source and sink, the ``produce``/``consume``/``broker`` commands, the
demo, the benchmarks and the test harness. A SASL or SSL setting given once in the
config's ``kafka`` section therefore reaches all of them.

Each builder has a ``*_kwargs`` twin returning exactly what the client is constructed
with, so the options can be checked without a broker. Secrets are ``SecretStr`` and
are unwrapped only into those kwargs, never into a repr or a log line.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from streamsynth.checks import check_bootstrap_servers, check_sasl
from streamsynth.kafka.compat import guard_closed_writes

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    from streamsynth.config import KafkaSettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaConnection(BaseModel):
    """Bootstrap servers and security; builds the aiokafka clients."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str
    client_id: str = "streamsynth"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        check_bootstrap_servers(value)  # the rule config loading applies
        return value

    @model_validator(mode="after")
    def _complete(self) -> KafkaConnection:
        check_sasl(
            self.security_protocol,
            self.sasl_mechanism,
            self.sasl_username,
            has_password=self.sasl_password is not None,
        )
        return self

    @classmethod
    def from_settings(cls, kafka: KafkaSettings, **overrides: Any) -> KafkaConnection:
        """The connection part of the config's ``kafka`` section (``overrides`` win)."""
        fields = {name: getattr(kafka, name) for name in cls.model_fields if hasattr(kafka, name)}
        fields.update(overrides)
        return cls(**fields)

    # -- kwargs ---------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL/SASL_SSL (None for plaintext); reads the files now."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        password = self.ssl_password.get_secret_value() if self.ssl_password else None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=password,
        )
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Options every client takes: where the brokers are and how to authenticate."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs

    def consumer_kwargs(self, **options: Any) -> dict[str, Any]:
        """What :meth:`consumer` passes; ``options`` are consumer settings (group_id, ...)."""
        return {**self.client_kwargs(), **options}

    def producer_kwargs(self, **options: Any) -> dict[str, Any]:
        """What :meth:`producer` passes; ``options`` are producer settings (acks, ...)."""
        return {**self.client_kwargs(), **options}

    def admin_kwargs(self, **options: Any) -> dict[str, Any]:
        """What :meth:`admin` passes."""
        return {**self.client_kwargs(), **options}

    # -- clients (not started; each built with compat's guard on aiokafka's writes) -------
    def consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        from aiokafka import AIOKafkaConsumer

        guard_closed_writes()
        return AIOKafkaConsumer(*topics, **self.consumer_kwargs(**options))

    def producer(self, **options: Any) -> AIOKafkaProducer:
        from aiokafka import AIOKafkaProducer

        guard_closed_writes()
        return AIOKafkaProducer(**self.producer_kwargs(**options))

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        from aiokafka.admin import AIOKafkaAdminClient

        guard_closed_writes()
        return AIOKafkaAdminClient(**self.admin_kwargs(**options))
