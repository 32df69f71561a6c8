"""The Store contract against every backend: the file store, and real PostgreSQL and Redis servers
(AEGIS_TEST_PG_URL, AEGIS_TEST_REDIS_URL; skipped with a reason when unset)."""

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
from aegisd.core.errors import Unavailable
from aegisd.core.models import (
    SCHEMA_VERSION,
    Event,
    PendingPermission,
    PermissionOption,
    SessionRecord,
    TranscriptEntry,
)
from aegisd.store import Store, open_store
from aegisd.store._file import EVENT_RING

from .conftest import drop_store

PG = os.environ.get("AEGIS_TEST_PG_URL")
REDIS = os.environ.get("AEGIS_TEST_REDIS_URL")

BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("postgres", id="postgres",
                 marks=pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set (a PostgreSQL to test against)")),
    pytest.param("redis", id="redis",
                 marks=pytest.mark.skipif(not REDIS, reason="AEGIS_TEST_REDIS_URL not set (a Redis to test against)")),
]


def rec(i: int = 1, **kw: Any) -> SessionRecord:
    return SessionRecord(id=f"s{i}", workDir="/w", createdAt=i, **kw)


def entry(i: int) -> TranscriptEntry:
    return TranscriptEntry(id=i, role="assistant", contentType="text", text=f"t{i} ünïcode\nline", timestamp=i)


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., Store]]:
    """A factory of stores that all point at the same place (directory, tables, key prefix)."""
    async with _factory(request.param, tmp_path) as f:
        yield f


@pytest.fixture(params=BACKENDS[1:])
async def server_make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., Store]]:
    """The same, for the stores with a server behind them."""
    async with _factory(request.param, tmp_path) as f:
        yield f


@pytest.fixture(params=BACKENDS[2:])
async def redis_make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., Store]]:
    async with _factory(request.param, tmp_path) as f:
        yield f


@contextlib.asynccontextmanager
async def _factory(kind: str, tmp_path: Path) -> AsyncIterator[Callable[..., Store]]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {"sessionStore": kind, "stateDir": str(tmp_path / "state")}
    if kind == "postgres":
        values.update(postgresUrl=PG, pgTable=name)
    if kind == "redis":
        values.update(redisUrl=REDIS, redisKeyPrefix=name)

    def factory(**overrides: Any) -> Store:
        cfg = load_config(env={}, config_path=None, overrides={**values, **overrides}, cwd=tmp_path)
        if kind == "file":
            cfg.state_path.mkdir(parents=True, exist_ok=True)
        if kind == "redis":
            from aegisd.store._redis import RedisStore

            return RedisStore(cfg, lock_ttl_ms=1500)  # short, so the single-writer test stays quick
        return open_store(cfg)
    factory.kind = kind  # type: ignore[attr-defined]
    yield factory
    if kind != "file":
        await trio.to_thread.run_sync(drop_store, kind, name)


async def test_roundtrip_and_replace(make: Any) -> None:
    st = make()
    await st.open()
    full = rec(1, pendingPermission=PendingPermission(
        requestId="r", toolTitle="t", rawInput={"a": [1, 2], "ü": None},
        options=[PermissionOption(optionId="o", kind="k")]))
    await st.save_session(rec(3))
    await st.save_session(full)
    await st.save_session(rec(2))
    await st.save_session(rec(2, name="renamed"))
    await st.close()
    st2 = make()
    await st2.open()
    got = await st2.load_sessions()
    assert [r.id for r in got] == ["s1", "s2", "s3"]  # oldest first
    if make.kind == "postgres":  # the cluster's store records who runs each session: the node that saved it
        assert {r.node for r in got} == {st.node.id}  # type: ignore[attr-defined]
        got[0].node = None
    assert got[0] == full and got[1].name == "renamed"
    await st2.close()


async def test_transcript_pages(make: Any) -> None:
    st = make()
    await st.open()
    await st.append_transcript("s1", [entry(i) for i in range(1, 6)])
    await st.append_transcript("s1", [entry(6)])
    await st.append_transcript("s2", [entry(1)])
    assert await st.transcript_count("s1") == 6 and await st.transcript_count("nope") == 0
    assert [e.id for e in await st.read_transcript("s1", 2, 3)] == [3, 4, 5]
    assert [e.id for e in await st.read_transcript("s1", 4)] == [5, 6]
    assert await st.read_transcript("s1", 10) == []
    assert (await st.read_transcript("s1", 0, 1))[0].text == "t1 ünïcode\nline"
    await st.close()
    st2 = make()
    await st2.open()
    assert await st2.transcript_count("s1") == 6
    await st2.append_transcript("s1", [entry(7)])
    assert [e.id for e in await st2.read_transcript("s1", 5)] == [6, 7]
    await st2.close()


async def test_events_ring_and_last_id(make: Any) -> None:
    st = make()
    await st.open()
    assert await st.last_event_id() == 0
    n = 2 * EVENT_RING + 10
    batch = [Event(id=i, event="x", sessionId="a" if i % 2 else "b", timestamp=0, data={"i": i})
             for i in range(1, n + 1)]
    for i in range(0, n, 500):  # in batches, as the bus persister writes them
        await st.append_events(batch[i:i + 500])
    assert await st.last_event_id() == n
    got = await st.read_events(session_id="a", after_id=n - 10)
    assert [e.id for e in got] == [i for i in range(n - 9, n + 1) if i % 2]
    assert got[-1].data == {"i": n - 1 if n % 2 == 0 else n}
    assert [e.id for e in await st.read_events(session_id=None, after_id=n - 3)] == [n - 2, n - 1, n]
    assert len(await st.read_events(session_id="a", after_id=0, limit=5)) == 5
    await st.close()
    st2 = make()
    await st2.open()
    assert await st2.last_event_id() == n
    # each session's events stay bounded: at least the newest EVENT_RING, at most twice that
    await st2.append_events([Event(id=n + i, event="x", sessionId="a", timestamp=0) for i in range(1, 2 * EVENT_RING)])
    kept = await st2.read_events(session_id="a", after_id=0, limit=10 * EVENT_RING)
    assert EVENT_RING <= len(kept) <= 2 * EVENT_RING and kept[-1].id == n + 2 * EVENT_RING - 1
    await st2.close()


async def test_delete_session_and_last_id_survives(make: Any) -> None:
    st = make()
    await st.open()
    await st.save_session(rec(1))
    await st.save_session(rec(2))
    await st.append_transcript("s1", [entry(1), entry(2)])
    await st.append_events([Event(id=1, event="x", sessionId="s1", timestamp=0),
                            Event(id=2, event="x", sessionId="s2", timestamp=0)])
    await st.delete_session("s1")
    assert [r.id for r in await st.load_sessions()] == ["s2"]
    assert await st.transcript_count("s1") == 0 and await st.read_transcript("s1") == []
    assert await st.read_events(session_id="s1", after_id=0) == []
    assert [e.id for e in await st.read_events(session_id=None, after_id=0)] == [2]
    await st.close()
    st2 = make()
    await st2.open()
    assert await st2.last_event_id() == 2  # ids never go back, even after deletions
    await st2.close()


async def test_single_writer(server_make: Any) -> None:
    """Redis: one daemon per key prefix. PostgreSQL: one daemon per node id (other ids join the cluster)."""
    make = server_make
    first = make()
    await first.open()
    with pytest.raises(Unavailable, match="another aegisd" if make.kind == "redis" else "is held by a live aegisd"):
        await make().open()
    await first.close()
    second = make()  # released on close: the next daemon starts at once
    with trio.fail_after(5):
        await second.open()
    await second.close()


async def test_newer_schema_is_refused(server_make: Any) -> None:
    make = server_make
    st = make()
    await st.open()
    name = st.table if make.kind == "postgres" else st.prefix  # type: ignore[attr-defined]
    await st.close()

    def bump() -> None:
        if make.kind == "postgres":
            import psycopg

            with psycopg.connect(PG or "", autocommit=True) as conn:
                conn.execute(f"UPDATE public.\"{name}_meta\" SET value = %s WHERE key = 'schema_version'",
                             (SCHEMA_VERSION + 1,))
        else:
            import redis

            with redis.Redis.from_url(REDIS or "") as r:
                r.hset(f"{name}:meta", "schema_version", SCHEMA_VERSION + 1)
    await trio.to_thread.run_sync(bump)
    with pytest.raises(Unavailable, match="schema version"):
        await make().open()
    again = make()  # the refusal released the lock
    with pytest.raises(Unavailable, match="schema version"):
        await again.open()


async def test_unreachable_server(server_make: Any) -> None:
    make = server_make
    bad = {"postgres": {"postgresUrl": "postgresql://aegis:secret@127.0.0.1:1/none"},
           "redis": {"redisUrl": "redis://:secret@127.0.0.1:1/0"}}[make.kind]
    with pytest.raises(Unavailable, match="cannot connect") as err:
        await make(**bad).open()
    assert "secret" not in str(err.value) and "***" in str(err.value)


async def test_redis_lock_left_by_a_dead_daemon(redis_make: Any) -> None:
    make = redis_make
    import socket

    import redis

    st = make()
    prefix = st.prefix  # type: ignore[attr-defined]
    with redis.Redis.from_url(REDIS or "") as r:  # a SIGKILLed daemon of this host: taken over at once
        r.set(f"{prefix}:lock", f"{socket.gethostname()}:999999999:x", px=600_000)
    with trio.fail_after(1):
        await st.open()
    await st.close()
    with redis.Redis.from_url(REDIS or "") as r:  # another host's daemon: its lock must expire first
        r.set(f"{prefix}:lock", "elsewhere:1:x", px=500)
    start = trio.current_time()
    st = make()
    with trio.fail_after(5):
        await st.open()
    assert trio.current_time() - start >= 0.3
    await st.close()
