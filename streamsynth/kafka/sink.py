"""The output side: one AIOKafkaProducer for every output topic, the DLQ and filtered topic.

``acks="all"`` so an acknowledged record survives a broker failover. No
idempotent producer: Tansu rejects InitProducerId, and at-least-once delivery
does not need it (duplicates come only from records in flight at a crash).

A publish is reported through a callback, not awaited by the caller, so a record
does not hold a task open while the broker acknowledges it. Messages are packed
into one record batch per topic-partition (aiokafka's batch API) and a batch is
handed to the producer when full or after ``linger_ms``: per-message
``producer.send()`` costs about ten times more CPU than appending to a batch,
and the worker's throughput is bound by that CPU. Keys are partitioned as Kafka's
default partitioner does (murmur2), so outputs land where any producer would put them;
the partition is computed once, here (:mod:`~streamsynth.kafka.partitioner`, a faster
equal of aiokafka's), and handed to the producer with the batch, so nothing hashes the
key again.

A delivery that fails with a transient error is re-sent, message by message, with
backoff until it is acknowledged or the sink is closed: a record whose output was
never acknowledged is never reported done, so its offset is never committed.
Only an error that no retry can fix (a record larger than the broker accepts) is
reported to the callback. During an outage every message fails on every retry:
those warnings are folded into one line per topic and error per
interval, with the count (:mod:`streamsynth.kafka.repeats`).

:meth:`Sink.stop` takes a deadline: a producer that cannot flush (broker down) is
abandoned when it passes, and its unacknowledged messages stay unfinished records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordTooLargeError,
)

from streamsynth.config import Settings
from streamsynth.errors import StreamsynthError
from streamsynth.kafka.connection import KafkaConnection
from streamsynth.kafka.partitioner import key_partition, keyless_partition
from streamsynth.kafka.repeats import RepeatedWarning

log = logging.getLogger("streamsynth.kafka.sink")

#: Errors that re-sending can never fix.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

#: Bytes per record batch (per topic-partition); larger messages are sent on their own.
MAX_BATCH_BYTES = 512 * 1024

Headers = list[tuple[str, bytes]]
#: Passed for a message without headers (aiokafka would allocate a list per message; its
#: record builder only reads it, and wants a list).
_NO_HEADERS: Headers = []
#: Called once per message: None when acknowledged, the error when it can never be.
DeliveryCallback = Callable[[BaseException | None], None]


class SinkClosedError(StreamsynthError, RuntimeError):
    """The sink was closed before the message could be acknowledged."""

    error_type = "sink_closed"


@dataclass(slots=True)
class OutMessage:
    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers | None = None


def producer_options(settings: Settings) -> dict[str, Any]:
    """The worker's producer settings (the connection part comes from KafkaConnection)."""
    kafka = settings.kafka
    return {
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": kafka.linger_ms,
        "compression_type": kafka.compression_type,
        # Batches of many small outputs per request; larger records get a batch each.
        "max_batch_size": MAX_BATCH_BYTES,
        # Dead-lettered values are republished unchanged, however large; the broker has
        # the last word (a rejection is a permanent error handled by the worker).
        "max_request_size": max(kafka.fetch_max_bytes, settings.record.max_record_bytes * 2),
    }


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """Everything the worker's producer is constructed with."""
    return KafkaConnection.from_settings(settings.kafka).producer_kwargs(
        **producer_options(settings)
    )


class _OpenBatch:
    """Messages appended to one topic-partition's batch, not yet handed to the producer."""

    __slots__ = ("builder", "entries", "partition", "timer", "topic")

    def __init__(self, builder: Any, topic: str, partition: int) -> None:
        self.builder = builder
        self.topic = topic
        self.partition = partition
        self.entries: list[tuple[OutMessage, DeliveryCallback]] = []
        self.timer: asyncio.TimerHandle | None = None


class Sink:
    """Publishes messages and reports their acknowledgement through callbacks."""

    def __init__(
        self,
        settings: Settings,
        *,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        connection = KafkaConnection.from_settings(settings.kafka)
        self.producer = connection.producer(**producer_options(settings))
        self._linger_s = settings.kafka.linger_ms / 1000
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: dict[tuple[str, int], _OpenBatch] = {}
        #: topic -> its partitions, sorted; dropped with each flushed batch of the topic,
        #: so a metadata change (more partitions) is seen within one linger interval.
        self._partitions: dict[str, list[int]] = {}
        # Small messages are batched; anything near the batch size goes through send().
        self._batch_limit = MAX_BATCH_BYTES // 4
        self._retry_warning = RepeatedWarning(log, "publish failed, retrying")
        self._batch_warning = RepeatedWarning(
            log, "batch publish failed; re-sending its messages one by one"
        )

    async def start(self) -> None:
        await self.producer.start()

    # -- the fast path: append to a batch -------------------------------------------------
    def submit(self, msg: OutMessage, callback: DeliveryCallback) -> None:
        """Queue ``msg``; ``callback`` runs once it is acknowledged (or can never be)."""
        if self._closed:
            raise SinkClosedError("the sink is closed")
        topic, key, value = msg.topic, msg.key, msg.value
        partition = self._partition_for(topic, key)
        size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
        if partition is None or size > self._batch_limit:
            self._spawn(self._send_one(msg, callback))
            return
        batch = self._open.get((topic, partition))
        if batch is None:
            batch = self._new_batch(topic, partition)
        headers = msg.headers or _NO_HEADERS
        if batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            self._flush_batch(batch)  # full: send it, start another
            batch = self._new_batch(topic, partition)
            if batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                self._spawn(self._send_one(msg, callback))
                return
        batch.entries.append((msg, callback))

    def _partition_for(self, topic: str, key: bytes | None) -> int | None:
        """Kafka's default partition for the key; None while the topic's metadata is unknown."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            known = self.producer.client.cluster.partitions_for_topic(topic)
            if not known:
                return None
            partitions = self._partitions[topic] = sorted(known)
        if key is None:
            available = self.producer.client.cluster.available_partitions_for_topic(topic)
            return keyless_partition(partitions, list(available or []))
        return key_partition(key, partitions)

    def _new_batch(self, topic: str, partition: int) -> _OpenBatch:
        batch = _OpenBatch(self.producer.create_batch(), topic, partition)
        self._open[(topic, partition)] = batch
        loop = asyncio.get_running_loop()
        batch.timer = loop.call_later(self._linger_s, self._flush_batch, batch)
        return batch

    def _flush_batch(self, batch: _OpenBatch) -> None:
        key = (batch.topic, batch.partition)
        if self._open.get(key) is batch:
            del self._open[key]
        self._partitions.pop(batch.topic, None)
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if batch.entries:
            batch.builder.close()
            self._spawn(self._send_batch(batch))

    def flush_open(self) -> None:
        """Hand every open batch to the producer now."""
        for batch in list(self._open.values()):
            self._flush_batch(batch)

    async def _send_batch(self, batch: _OpenBatch) -> None:
        try:
            future = await self.producer.send_batch(
                batch.builder, batch.topic, partition=batch.partition
            )
        except (KafkaError, OSError) as exc:
            self._batch_failed(batch, exc)
            return
        future.add_done_callback(lambda fut: self._on_batch_delivery(batch, fut))

    def _on_batch_delivery(self, batch: _OpenBatch, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._batch_failed(batch, exc)
            return
        for _, callback in batch.entries:
            callback(None)

    def _batch_failed(self, batch: _OpenBatch, exc: BaseException) -> None:
        if self._closed:
            return  # unacknowledged: the records stay unfinished and are redelivered
        error = type(exc).__name__
        self._batch_warning.warn(
            (batch.topic, error),
            {"topic": batch.topic, "partition": batch.partition, "error": error},
        )
        for msg, callback in batch.entries:
            self._spawn(self._redeliver(msg, callback, exc))

    # -- the slow path: one message, retried ----------------------------------------------
    async def _send_one(self, msg: OutMessage, callback: DeliveryCallback) -> None:
        try:
            future = await self._enqueue(msg)
        except PERMANENT_ERRORS as exc:
            callback(exc)
            return
        except SinkClosedError:
            return
        future.add_done_callback(lambda fut: self._on_delivery(msg, callback, fut))

    async def _enqueue(self, msg: OutMessage) -> asyncio.Future[Any]:
        attempt = 0
        while True:
            try:
                future: asyncio.Future[Any] = await self.producer.send(
                    msg.topic, msg.value, key=msg.key, headers=msg.headers
                )
                return future
            except PERMANENT_ERRORS:
                raise
            except (KafkaError, OSError) as exc:
                if self._closed or isinstance(exc, ProducerClosed):
                    raise SinkClosedError("the sink is closed") from exc
                attempt += 1
                await self._backoff(msg, exc, attempt)

    def _on_delivery(
        self, msg: OutMessage, callback: DeliveryCallback, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            callback(None)
        elif isinstance(exc, PERMANENT_ERRORS):
            callback(exc)
        elif not self._closed:
            self._spawn(self._redeliver(msg, callback, exc))

    async def _redeliver(
        self, msg: OutMessage, callback: DeliveryCallback, first: BaseException
    ) -> None:
        """Re-send until acknowledged; the caller's callback runs exactly once."""
        exc: BaseException = first
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._backoff(msg, exc, attempt)
                future = await self._enqueue(msg)
                await future
            except PERMANENT_ERRORS as perm:
                callback(perm)
                return
            except SinkClosedError:
                return
            except (KafkaError, OSError) as err:
                exc = err
                continue
            callback(None)
            return

    async def _backoff(self, msg: OutMessage, exc: BaseException, attempt: int) -> None:
        if self._closed:
            raise SinkClosedError("the sink is closed") from exc
        delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** min(attempt - 1, 16))
        delay *= 0.5 + random.random() / 2  # jitter: many records fail together
        error = type(exc).__name__
        # Per message and retry this would be thousands of lines a minute in an outage.
        self._retry_warning.warn(
            (msg.topic, error),
            {"topic": msg.topic, "attempt": attempt, "error": error, "retry_in_s": round(delay, 3)},
        )
        await asyncio.sleep(delay)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send every open batch and wait until the producer's buffer is empty."""
        self.flush_open()
        await self.producer.flush()

    async def stop(self, timeout_s: float | None = None) -> bool:
        """Send what is batched, stop retrying, close the producer (it flushes first).

        False when the producer could not flush and close within ``timeout_s``
        (the broker is down): it is abandoned, and what it held was never
        acknowledged, so those records stay unfinished (redone, never lost).
        """
        self.flush_open()
        # Let the batch hand-offs reach the producer before retries are cancelled.
        await asyncio.sleep(0)
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._retry_warning.flush()
        self._batch_warning.flush()
        try:
            await asyncio.wait_for(self.producer.stop(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                # Drop its connections at least (no flush): nothing may hold the exit.
                await asyncio.wait_for(self.producer.client.close(), 1.0)
            return False
        return True
