"""A response cache, so that a redelivered record is not generated (or billed) twice.

Rule: only *deterministic* requests are cached -- ``GenerationConfig.deterministic``,
i.e. ``n == 1`` and (``temperature == 0`` or a fixed ``seed``). For those the same
request is expected to give the same answer, so answering a Kafka redelivery from
the cache changes nothing but the bill. Sampled requests (temperature > 0 without a
seed, or n > 1) always go to the server: serving them from a cache would silently
collapse the diversity they were asked for. Only successful answers are stored.

The key is :meth:`ChatRequest.cache_key` (model, messages, generation config; not the
stage name, so two stages asking the same thing share an answer).

A hit comes back with ``cached=True``, ``attempts=0``, ``latency_s=0`` and zero usage:
its tokens were counted and paid for when it was first generated, and zero usage
guarantees that nothing downstream that sums usage counts them twice.

Two implementations: :class:`MemoryCache` (an LRU dict) and :class:`SQLiteCache` (the
same LRU in front of a SQLite file in WAL mode, which survives restarts). SQLite runs
on one dedicated thread -- the only writer and reader of its connection -- so the
event loop never blocks on disk; writes are batched into one transaction per flush.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import orjson

from streamsynth.llm.types import ChatResult, Usage


class ResponseCache(Protocol):
    async def get(self, key: str) -> ChatResult | None: ...

    async def put(self, key: str, result: ChatResult) -> None: ...

    async def aclose(self) -> None: ...


def encode(result: ChatResult) -> bytes:
    """The stored form of an answer (its usage kept for inspection, never re-billed)."""
    return orjson.dumps(
        {
            "texts": result.texts,
            "finish_reasons": result.finish_reasons,
            "model": result.model,
            "usage": [result.usage.prompt_tokens, result.usage.completion_tokens],
        }
    )


def decode(blob: bytes) -> ChatResult:
    data: dict[str, Any] = orjson.loads(blob)
    return ChatResult(
        texts=list(data["texts"]),
        finish_reasons=list(data["finish_reasons"]),
        usage=Usage(),
        model=str(data["model"]),
        latency_s=0.0,
        attempts=0,
        cached=True,
    )


class MemoryCache:
    """An in-process LRU of ``max_entries`` answers (0 disables it)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_blob(self, key: str) -> bytes | None:
        blob = self._entries.get(key)
        if blob is not None:
            self._entries.move_to_end(key)
        return blob

    def put_blob(self, key: str, blob: bytes) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = blob
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> ChatResult | None:
        blob = self.get_blob(key)
        return decode(blob) if blob is not None else None

    async def put(self, key: str, result: ChatResult) -> None:
        self.put_blob(key, encode(result))

    async def aclose(self) -> None:
        self._entries.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created_at REAL NOT NULL
)
"""


class SQLiteCache:
    """An LRU in memory in front of a SQLite file that survives restarts."""

    def __init__(self, path: str | Path, *, memory_entries: int = 10_000) -> None:
        self.path = Path(path)
        self.memory = MemoryCache(memory_entries)
        # One thread owns the connection: SQLite needs no locking and the loop never blocks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-cache")
        self._conn: sqlite3.Connection | None = None
        self._pending: dict[str, bytes] = {}
        self._flush: asyncio.Future[None] | None = None
        self._closed = False

    # -- runs on the cache thread -------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def _read(self, key: str) -> bytes | None:
        row = (
            self._connection()
            .execute("SELECT value FROM responses WHERE key = ?", (key,))
            .fetchone()
        )
        return bytes(row[0]) if row is not None else None

    def _write_many(self, items: list[tuple[str, bytes]]) -> None:
        conn = self._connection()
        now = time.time()
        with conn:  # one transaction per batch
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT OR REPLACE INTO responses (key, value, created_at) VALUES (?, ?, ?)",
                [(key, blob, now) for key, blob in items],
            )

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the event loop side ------------------------------------------------------------
    async def _on_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def get(self, key: str) -> ChatResult | None:
        blob = self.memory.get_blob(key) or self._pending.get(key)
        if blob is None:
            blob = await self._on_thread(self._read, key)
            if blob is None:
                return None
            self.memory.put_blob(key, blob)
        return decode(blob)

    async def put(self, key: str, result: ChatResult) -> None:
        blob = encode(result)
        self.memory.put_blob(key, blob)
        self._pending[key] = blob
        flush = self._flush
        if flush is None or flush.done() or flush.get_loop() is not asyncio.get_running_loop():
            # Writes that arrive while a flush runs wait for the next one: one
            # transaction per batch instead of one per answer. (A flush left on a loop
            # that has since stopped is abandoned: its items are still pending.)
            self._flush = asyncio.ensure_future(self._flush_pending())

    async def _flush_pending(self) -> None:
        while self._pending:
            items = list(self._pending.items())
            await self._on_thread(self._write_many, items)
            for key, blob in items:
                if self._pending.get(key) is blob:
                    del self._pending[key]

    async def flush(self) -> None:
        """Wait until every answer put so far is on disk."""
        loop = asyncio.get_running_loop()
        while self._flush is not None and not self._flush.done() and self._flush.get_loop() is loop:
            await self._flush
        if self._pending:
            await self._flush_pending()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            await self._on_thread(self._close_connection)
            self._executor.shutdown(wait=True)
