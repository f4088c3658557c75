"""A response cache, so that a redelivered record is not generated (or billed) twice.

Rule: only *deterministic* requests are cached -- ``GenerationConfig.deterministic``,
i.e. ``n == 1`` and (``temperature == 0`` or a fixed ``seed``). For those the same
request is expected to give the same answer, so answering a Kafka redelivery from
the cache changes nothing but the bill. Sampled requests (temperature > 0 without a
seed, or n > 1) always go to the server: serving them from a cache would silently
collapse the diversity they were asked for. Only successful answers are stored.

The key is :meth:`ChatRequest.fingerprint` (model, messages and the parameters sent;
not the stage name, so two stages asking the same thing share an answer). A record
redone after a crash or a rebalance sends the same request, so it is answered here.

A hit comes back with ``cached=True``, ``attempts=0``, ``latency_s=0`` and zero usage:
its tokens were counted and paid for when it was first generated, and zero usage
guarantees that nothing downstream that sums usage counts them twice.

Two implementations: :class:`MemoryCache` (an LRU dict) and :class:`SQLiteCache` (the
same LRU in front of a SQLite file in WAL mode, which survives restarts). SQLite runs
on one dedicated thread -- the only writer and reader of its connection -- so the
event loop never blocks on disk; writes are batched into one transaction per flush.

Both are bounded, because a worker runs for months. The SQLite file keeps at most
``max_entries`` answers: each row carries a use sequence number (bumped on write and
on every hit, in the same batched transaction), and each flush deletes the least
recently used rows beyond the bound. Its size and evictions are reported to the
observer (the ``streamsynth_llm_cache_entries`` gauge and
``streamsynth_llm_cache_evictions_total``). Several processes may share one file; each
enforces the bound on its own writes and recounts the rows every
``_RECOUNT_EVERY`` flushes, so the file stays close to the bound.
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

from streamsynth.llm.observer import NULL_OBSERVER, LLMObserver
from streamsynth.llm.types import ChatResult, Usage

#: Flushes between two recounts of the SQLite rows (other processes may write too).
_RECOUNT_EVERY = 64


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
            "endpoint": result.endpoint,
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
        endpoint=data.get("endpoint"),
    )


class MemoryCache:
    """An in-process LRU of ``max_entries`` answers (0 disables it).

    With an ``observer`` it reports its size and evictions (as the ``memory`` cache);
    the front of a :class:`SQLiteCache` has none, because dropping an answer from the
    front is not an eviction: it is still on disk.
    """

    def __init__(self, max_entries: int = 10_000, *, observer: LLMObserver | None = None) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._observer = observer
        self.evictions = 0

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
        evicted = 0
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            evicted += 1
        if evicted:
            self.evictions += evicted
        if self._observer is not None:
            if evicted:
                self._observer.on_cache_evictions(count=evicted)
            self._observer.on_cache_size(entries=len(self._entries))

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
    created_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
)
"""


class SQLiteCache:
    """An LRU in memory in front of a SQLite file of at most ``max_entries`` answers."""

    def __init__(
        self,
        path: str | Path,
        *,
        memory_entries: int = 10_000,
        max_entries: int = 1_000_000,
        observer: LLMObserver | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.path = Path(path)
        self.memory = MemoryCache(memory_entries)
        self.max_entries = max_entries
        self._observer = observer or NULL_OBSERVER
        # One thread owns the connection: SQLite needs no locking and the loop never blocks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-cache")
        self._conn: sqlite3.Connection | None = None
        self._pending: dict[str, bytes] = {}
        self._touched: set[str] = set()
        self._flush: asyncio.Future[None] | None = None
        self._closed = False
        # Owned by the cache thread: rows in the file, the last use number, flush count.
        self._rows = 0
        self._used = 0
        self._flushes = 0
        #: Rows deleted to keep the bound, since this cache was opened.
        self.evictions = 0

    # -- runs on the cache thread -------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
            if "used" not in columns:  # a file written before the bound existed
                conn.execute("ALTER TABLE responses ADD COLUMN used INTEGER NOT NULL DEFAULT 0")
            conn.execute("CREATE INDEX IF NOT EXISTS responses_used ON responses (used)")
            self._rows, self._used = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(used), 0) FROM responses"
            ).fetchone()
            self._conn = conn
        return self._conn

    def _read(self, key: str) -> bytes | None:
        row = (
            self._connection()
            .execute("SELECT value FROM responses WHERE key = ?", (key,))
            .fetchone()
        )
        return bytes(row[0]) if row is not None else None

    def _write_many(self, items: list[tuple[str, bytes]], touched: list[str]) -> tuple[int, int]:
        """Store ``items``, mark ``touched`` as used, evict beyond the bound: one transaction.

        Returns the rows now in the file and how many this flush evicted.
        """
        conn = self._connection()
        now = time.time()
        with conn:
            conn.execute("BEGIN")
            for key, blob in items:
                self._used += 1
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO responses (key, value, created_at, used) "
                    "VALUES (?, ?, ?, ?)",
                    (key, blob, now, self._used),
                ).rowcount
                if inserted:
                    self._rows += 1
                else:
                    conn.execute(
                        "UPDATE responses SET value = ?, used = ? WHERE key = ?",
                        (blob, self._used, key),
                    )
            for key in touched:
                self._used += 1
                conn.execute("UPDATE responses SET used = ? WHERE key = ?", (self._used, key))
            self._flushes += 1
            if self._flushes % _RECOUNT_EVERY == 0:
                self._rows = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            evicted = 0
            if self._rows > self.max_entries:
                evicted = conn.execute(
                    "DELETE FROM responses WHERE key IN "
                    "(SELECT key FROM responses ORDER BY used LIMIT ?)",
                    (self._rows - self.max_entries,),
                ).rowcount
                self._rows -= evicted
        return self._rows, evicted

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
        # A hit makes the row recently used, so the bound evicts cold answers first.
        self._touched.add(key)
        self._schedule_flush()
        return decode(blob)

    async def put(self, key: str, result: ChatResult) -> None:
        blob = encode(result)
        self.memory.put_blob(key, blob)
        self._pending[key] = blob
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        flush = self._flush
        if flush is None or flush.done() or flush.get_loop() is not asyncio.get_running_loop():
            # Writes that arrive while a flush runs wait for the next one: one
            # transaction per batch instead of one per answer. (A flush left on a loop
            # that has since stopped is abandoned: its items are still pending.)
            self._flush = asyncio.ensure_future(self._flush_pending())

    async def _flush_pending(self) -> None:
        while self._pending or self._touched:
            items = list(self._pending.items())
            touched, self._touched = [k for k in self._touched if k not in self._pending], set()
            rows, evicted = await self._on_thread(self._write_many, items, touched)
            for key, blob in items:
                if self._pending.get(key) is blob:
                    del self._pending[key]
            if evicted:
                self.evictions += evicted
                self._observer.on_cache_evictions(count=evicted)
            self._observer.on_cache_size(entries=rows)

    async def flush(self) -> None:
        """Wait until every answer put so far is on disk."""
        loop = asyncio.get_running_loop()
        while self._flush is not None and not self._flush.done() and self._flush.get_loop() is loop:
            await self._flush
        if self._pending or self._touched:
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
