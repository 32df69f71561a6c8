"""The keyed documents and append-only logs of every store (file, memory, PostgreSQL, Redis), and each feature
that persists through them: templates, memory, API keys, audit, usage, webhook dead letters, pipelines and SSO
sessions. PostgreSQL and Redis run when AEGIS_TEST_PG_URL / AEGIS_TEST_REDIS_URL are set (`. scripts/test-env.sh`),
each test on tables / a key prefix of its own; otherwise they are skipped with the reason."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.config import load_config
from aegisd.store import Collection, RecordLog, Store, open_store
from aegisd.store._memory import MemoryStore

from .conftest import drop_store

PG = os.environ.get("AEGIS_TEST_PG_URL")
REDIS = os.environ.get("AEGIS_TEST_REDIS_URL")

BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("memory", id="memory"),
    pytest.param("postgres", id="postgres",
                 marks=pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set (a PostgreSQL to test against)")),
    pytest.param("redis", id="redis",
                 marks=pytest.mark.skipif(not REDIS, reason="AEGIS_TEST_REDIS_URL not set (a Redis to test against)")),
]


@contextlib.asynccontextmanager
async def _factory(kind: str, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    """Stores that all point at the same place; the memory store is one object, so 'reopening' it keeps its data."""
    name = f"c_{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {"sessionStore": kind, "stateDir": str(tmp_path / "state")}
    if kind == "postgres":
        values.update(postgresUrl=PG, pgTable=name)
    if kind == "redis":
        values.update(redisUrl=REDIS, redisKeyPrefix=name)
    memory = MemoryStore()

    def factory() -> Store:
        if kind == "memory":
            return memory
        cfg = load_config(env={}, config_path=None, overrides=values, cwd=tmp_path)
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        return open_store(cfg)
    yield factory
    if kind in ("postgres", "redis"):
        await trio.to_thread.run_sync(drop_store, kind, name)


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    async with _factory(request.param, tmp_path) as f:
        yield f


@contextlib.asynccontextmanager
async def opened(make: Callable[[], Store]) -> AsyncIterator[Store]:
    st = make()
    await st.open()
    try:
        yield st
    finally:
        await st.close()


# ---- the primitives ------------------------------------------------------------------------------------------
async def test_documents_roundtrip_replace_delete(make: Any) -> None:
    async with opened(make) as st:
        c = Collection(st, "things")
        assert await c.get("a") is None and await c.list() == {}
        doc = {"n": 1, "ü": ["x", None, 2.5], "nested": {"k": True}}
        await c.put("a", doc)
        doc["n"] = 99  # a later change to the caller's object is not stored
        await c.put("b/with spaces:and/slashes", {"n": 2})
        await c.put("a", {"n": 3})
        await Collection(st, "others").put("a", {"other": True})
        long_key = "k" * 400
        await c.put(long_key, [1, 2])
        await c.delete("missing")  # nothing happens
    async with opened(make) as st:
        c = Collection(st, "things")
        assert await c.get("a") == {"n": 3}
        assert await c.get("b/with spaces:and/slashes") == {"n": 2}
        assert await c.get(long_key) == [1, 2]
        assert await c.list() == {"a": {"n": 3}, "b/with spaces:and/slashes": {"n": 2}, long_key: [1, 2]}
        await c.delete("a")
        assert await c.get("a") is None
        assert await Collection(st, "others").list() == {"a": {"other": True}}
    async with opened(make) as st:
        assert set(await Collection(st, "things").list()) == {"b/with spaces:and/slashes", long_key}


async def test_bad_collection_names_are_refused(make: Any) -> None:
    async with opened(make) as st:
        for bad in ("", "../x", "a/b", "UPPER"):
            with pytest.raises(ValueError):
                Collection(st, bad)
            with pytest.raises(ValueError):
                RecordLog(st, bad)


async def test_log_sequence_read_and_trim(make: Any) -> None:
    async with opened(make) as st:
        lg = RecordLog(st, "events-x")
        assert await lg.read() == []
        seqs = [await lg.append({"i": i}) for i in range(1, 6)]
        assert seqs == [1, 2, 3, 4, 5]
        assert await RecordLog(st, "other").append("first") == 1  # numbered per log
        assert await lg.read(after=2, limit=2) == [(3, {"i": 3}), (4, {"i": 4})]
        assert await lg.read(after=5) == []
    async with opened(make) as st:
        lg = RecordLog(st, "events-x")
        assert [s for s, _ in await lg.read()] == [1, 2, 3, 4, 5]
        await lg.trim(before=4)
        assert await lg.read() == [(4, {"i": 4}), (5, {"i": 5})]
        assert await lg.append({"i": 6}) == 6
        assert await lg.read(after=0, limit=1) == [(4, {"i": 4})]
    async with opened(make) as st:
        lg = RecordLog(st, "events-x")
        await lg.trim(before=100)  # everything: the numbering still goes on
        assert await lg.read() == []
    async with opened(make) as st:
        lg = RecordLog(st, "events-x")
        assert await lg.append({"i": 7}) == 7
        assert await lg.read() == [(7, {"i": 7})]


async def test_concurrent_appends_get_distinct_ordered_seqs(make: Any) -> None:
    async with opened(make) as st:
        lg = RecordLog(st, "many")
        got: list[int] = []

        async def one(i: int) -> None:
            got.append(await lg.append({"i": i}))
        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(one, i)
        assert sorted(got) == list(range(1, 21))
        records = await lg.read()
        assert [s for s, _ in records] == list(range(1, 21))


async def test_concurrent_puts_keep_the_last(make: Any) -> None:
    async with opened(make) as st:
        c = Collection(st, "race")
        for i in range(10):
            await c.put("k", {"i": i})
        assert await c.get("k") == {"i": 9}
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(c.put, f"k{i}", {"i": i})
        assert len(await c.list()) == 11
