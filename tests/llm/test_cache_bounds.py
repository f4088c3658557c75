"""The response cache stays within its bound (SQLite and memory) and reports it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from streamsynth.llm.cache import MemoryCache, SQLiteCache
from streamsynth.llm.observer import LLMObserver
from streamsynth.llm.types import ChatRequest, ChatResult, GenerationConfig, Usage


class CountingObserver(LLMObserver):
    def __init__(self) -> None:
        self.evictions = 0
        self.sizes: list[int] = []

    def on_cache_evictions(self, *, count: int) -> None:
        self.evictions += count

    def on_cache_size(self, *, entries: int) -> None:
        self.sizes.append(entries)


def request(i: int) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=({"role": "user", "content": f"document {i}"},),
        config=GenerationConfig(temperature=0.0, max_tokens=16),
    )


def answer(i: int) -> ChatResult:
    return ChatResult([f"answer {i}"], ["stop"], Usage(3, 2), "m", endpoint="http://127.0.0.1:1/v1")


def rows(path: Path) -> int:
    conn = sqlite3.connect(path)  # a second reader: WAL lets it see committed rows
    try:
        return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    finally:
        conn.close()


async def test_sqlite_cache_stays_under_its_bound_over_100k_distinct_requests(
    tmp_path: Path,
) -> None:
    bound, total = 500, 100_000
    path = tmp_path / "cache.sqlite3"
    observer = CountingObserver()
    cache = SQLiteCache(path, memory_entries=100, max_entries=bound, observer=observer)
    try:
        largest = 0
        for i in range(total):
            await cache.put(request(i).cache_key(), answer(i))
            if i % 200 == 199:
                await asyncio.sleep(0)  # let the flush task run, as a live worker would
            if i % 10_000 == 9_999:
                await cache.flush()
                largest = max(largest, rows(path))
        await cache.flush()
        assert rows(path) == bound
        assert largest <= bound
        assert cache.evictions == total - bound
        assert observer.evictions == total - bound
        assert observer.sizes[-1] == bound
        # The most recent answers survived; the oldest were evicted.
        assert await cache.get(request(total - 1).cache_key()) is not None
        assert await cache.get(request(0).cache_key()) is None
    finally:
        await cache.aclose()
    # The file is bounded too: 100k answers unbounded take well over 10 MB.
    size = sum(f.stat().st_size for f in tmp_path.iterdir())  # noqa: ASYNC240 (after the loop)
    assert size < 4 * 1024 * 1024, size


async def test_sqlite_hits_keep_an_answer_from_eviction(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = SQLiteCache(path, memory_entries=0, max_entries=3)
    try:
        for i in range(3):
            await cache.put(request(i).cache_key(), answer(i))
        await cache.flush()
        assert await cache.get(request(0).cache_key()) is not None  # 0 is now the newest
        await cache.flush()
        await cache.put(request(3).cache_key(), answer(3))
        await cache.flush()
        assert await cache.get(request(0).cache_key()) is not None
        assert await cache.get(request(1).cache_key()) is None  # least recently used
        assert cache.evictions == 1
    finally:
        await cache.aclose()


async def test_sqlite_bound_holds_across_restarts_and_old_files(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    # A file from before the bound existed: no 'used' column.
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE responses (key TEXT PRIMARY KEY, value BLOB NOT NULL, created_at REAL)"
    )
    conn.commit()
    conn.close()
    first = SQLiteCache(path, memory_entries=0, max_entries=10)
    for i in range(10):
        await first.put(request(i).cache_key(), answer(i))
    await first.aclose()
    again = SQLiteCache(path, memory_entries=0, max_entries=10)
    try:
        for i in range(10, 15):
            await again.put(request(i).cache_key(), answer(i))
        await again.flush()
        assert rows(path) == 10
        assert again.evictions == 5
        hit = await again.get(request(14).cache_key())
        assert hit is not None and hit.cached and hit.text == "answer 14"
        assert hit.endpoint == "http://127.0.0.1:1/v1"  # kept for the output's lineage
    finally:
        await again.aclose()


async def test_memory_cache_reports_size_and_evictions() -> None:
    observer = CountingObserver()
    cache = MemoryCache(10, observer=observer)
    for i in range(25):
        await cache.put(request(i).cache_key(), answer(i))
    assert len(cache) == 10
    assert cache.evictions == observer.evictions == 15
    assert observer.sizes[-1] == 10


def test_cache_key_is_the_request_fingerprint_of_what_is_sent() -> None:
    base = request(1)
    same = ChatRequest(
        model="m",
        messages=({"role": "user", "content": "document 1"},),
        config=GenerationConfig(temperature=0.0, max_tokens=16),
        stage="another stage",  # a label, not part of the request
    )
    assert base.cache_key() == same.cache_key() == base.fingerprint()
    changed = [
        ChatRequest("m2", base.messages, base.config),
        ChatRequest("m", ({"role": "user", "content": "document 2"},), base.config),
        ChatRequest("m", base.messages, GenerationConfig(temperature=0.0, max_tokens=17)),
        ChatRequest(
            "m",
            base.messages,
            GenerationConfig(
                temperature=0.0, max_tokens=16, response_format={"type": "json_object"}
            ),
        ),
    ]
    assert len({r.cache_key() for r in changed} | {base.cache_key()}) == 5


async def test_cache_size_and_evictions_are_prometheus_metrics(tmp_path: Path) -> None:
    from streamsynth.config import LLMSettings
    from streamsynth.llm.factory import build_llm_client
    from streamsynth.metrics.registry import Metrics

    metrics = Metrics()
    settings = LLMSettings(
        base_url="http://127.0.0.1:9/v1",
        model="m",
        cache={"kind": "sqlite", "path": tmp_path / "c.sqlite3", "max_entries": 4},
    )
    client = build_llm_client(settings, observer=metrics.llm_observer())
    try:
        cache = client.cache
        assert isinstance(cache, SQLiteCache)
        for i in range(10):
            await cache.put(request(i).cache_key(), answer(i))
        await cache.flush()
    finally:
        await client.aclose()
    registry = metrics.registry
    assert registry.get_sample_value("streamsynth_llm_cache_entries") == 4
    assert registry.get_sample_value("streamsynth_llm_cache_evictions_total") == 6
