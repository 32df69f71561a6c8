"""The keyed documents and append-only logs of every store (file, memory, PostgreSQL, Redis), and each feature
that persists through them: templates, memory, API keys, audit, usage, webhook dead letters, pipelines and SSO
sessions. PostgreSQL and Redis run when AEGIS_TEST_PG_URL / AEGIS_TEST_REDIS_URL are set (`. scripts/test-env.sh`),
each test on tables / a key prefix of its own; otherwise they are skipped with the reason."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
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


# ---- the features on top ---------------------------------------------------------------------------------------
async def test_templates(make: Any, tmp_path: Path) -> None:
    from aegisd.features.templates import Template, TemplateFields, TemplateStore

    async with opened(make) as st:
        ts = TemplateStore(Collection(st, "templates"))
        await ts.open()
        a = await ts.create(TemplateFields(name="a", prompt="p", env={"K": "v"}), owner="k1")
        b = await ts.create(TemplateFields(name="b"), owner=None)
        await ts.update(a.id, TemplateFields(description="changed"))
        await ts.delete(b.id)
    async with opened(make) as st:
        ts = TemplateStore(Collection(st, "templates"))
        await ts.open()
        [got] = ts.list()
        assert got.id == a.id and got.description == "changed" and got.env == {"K": "v"} and got.ownerKeyId == "k1"
    # an earlier version's templates.json moves in once
    legacy = tmp_path / "templates.json"
    old = Template(id="old-1", name="old", createdAt=1, updatedAt=1, prompt="hi")
    legacy.write_bytes(msgspec.json.encode([old]))
    async with opened(make) as st:
        ts = TemplateStore(Collection(st, "templates"))
        await ts.open(legacy=legacy)
        assert [t.id for t in ts.list()] == ["old-1", a.id] and ts.get("old-1") == old
    assert not legacy.exists() and (tmp_path / "templates.json.migrated").exists()
    async with opened(make) as st:
        ts = TemplateStore(Collection(st, "templates"))
        await ts.open(legacy=legacy)
        assert len(ts.list()) == 2


async def test_memory(make: Any, tmp_path: Path) -> None:
    from aegisd.features.memory import MemoryEntry, MemoryStore

    async with opened(make) as st:
        mem = MemoryStore(Collection(st, "memory"))
        await mem.open()
        await mem.set("proj/notes", "mine", owner="k1")
        await mem.set("proj/notes", "theirs", owner=None)  # another owner's space, same key
        await mem.set("proj/gone", "x", owner="k1")
        await mem.delete("proj/gone", owner="k1")
    async with opened(make) as st:
        mem = MemoryStore(Collection(st, "memory"))
        await mem.open()
        assert mem.get("proj/notes", owner="k1").value == "mine"
        assert mem.get("proj/notes", owner=None).value == "theirs"
        assert [e.key for e in mem.list(owners=lambda o: True)] == ["proj/notes", "proj/notes"]
    legacy = tmp_path / "memory.json"
    now = int(time.time() * 1000)
    legacy.write_bytes(msgspec.json.encode([
        MemoryEntry(key="old/a", value="1", namespace="old", created_at=1, updated_at=1, ownerKeyId="k2"),
        MemoryEntry(key="old/b", value="2", namespace="old", created_at=1, updated_at=1, expires_at=now - 1)]))
    async with opened(make) as st:
        mem = MemoryStore(Collection(st, "memory"))
        await mem.open(legacy=legacy)
        assert mem.get("old/a", owner="k2").value == "1"
        keys = sorted(e.key for e in mem.list(owners=lambda o: True))
        assert keys == ["old/a", "proj/notes", "proj/notes"]  # the expired one left the store
        assert len(await st.doc_list("memory")) == 3
    assert (tmp_path / "memory.json.migrated").exists()


async def test_webhook_dead_letters(make: Any, tmp_path: Path) -> None:
    from aegisd.notify.webhooks import DLQ_MAX, DeadLetter, Webhooks

    def hooks(st: Store, legacy: Path | None = None) -> Webhooks:
        return Webhooks(bus=None, records={}, alert=lambda *a, **k: None, endpoints=[],  # type: ignore[arg-type]
                        dlq=RecordLog(st, "webhooks-dlq"), legacy_dlq=legacy)

    def letter(i: int) -> DeadLetter:
        return DeadLetter(timestamp=i, endpoint="http://h/x", event="session.ended", error="HTTP 500", attempts=3,
                          payload={"session": {"id": f"s{i}"}})
    legacy = tmp_path / "webhooks-dlq.json"
    legacy.write_bytes(msgspec.json.encode([letter(0)]))
    async with opened(make) as st:
        w = hooks(st, legacy)
        await w.open()
        assert w.dlq == [letter(0)]
        for i in range(1, DLQ_MAX + 5):
            await w._save_dead_letter(letter(i))
        assert len(w.dlq) == DLQ_MAX and w.dlq[-1] == letter(DLQ_MAX + 4)
    assert (tmp_path / "webhooks-dlq.json.migrated").exists()
    async with opened(make) as st:
        w = hooks(st, legacy)
        await w.open()
        assert [x.timestamp for x in w.dlq] == list(range(5, DLQ_MAX + 5))
        assert len(await RecordLog(st, "webhooks-dlq").read()) == DLQ_MAX  # trimmed in the store too


async def test_pipelines(make: Any, tmp_path: Path) -> None:
    from aegisd.features.pipelines import PipelineManager, PipelineRecord, StageState

    class Bus:
        def publish(self, *a: Any) -> None:
            pass

    def manager(st: Store, legacy: Path | None = None) -> PipelineManager:
        return PipelineManager(sessions=None, bus=Bus(), verifier=None,  # type: ignore[arg-type]
                               collection=Collection(st, "pipelines"), legacy_dir=legacy)

    def record(pid: str, created: int) -> PipelineRecord:
        return PipelineRecord(id=pid, name=pid, workDir="/w", status="completed", createdAt=created, updatedAt=created,
                              stages=[StageState(name="a", prompt="p", workDir="/w", dependsOn=[], status="completed",
                                                 sessions=["s1"])])
    legacy = tmp_path / "pipelines"
    legacy.mkdir()
    (legacy / "p0.json").write_bytes(msgspec.json.encode(record("p0", 1)))
    async with opened(make) as st:
        pm = manager(st)
        await pm._save(record("p1", 2))
        await pm._save(record("p2", 3))
    async with opened(make) as st:
        pm = manager(st, legacy)
        await pm.load()
        assert list(pm.records) == ["p0", "p1", "p2"]  # oldest first
        assert pm.get("p1").stages[0].sessions == ["s1"]
    assert not legacy.exists() and (tmp_path / "pipelines.migrated" / "p0.json").exists()


async def test_sso_sessions(make: Any, tmp_path: Path) -> None:
    from aegisd.auth.oidc import DashboardSession, Oidc, _digest
    from aegisd.auth.principal import Principal

    cfg = load_config(env={}, config_path=None, overrides={"stateDir": str(tmp_path / "s")}, cwd=tmp_path).oidc
    now = int(time.time() * 1000)

    def sso(st: Store, legacy: Path | None = None) -> Oidc:
        return Oidc(cfg, lambda: "http://x", Collection(st, "sso-sessions"), legacy_file=legacy)
    legacy = tmp_path / "sso-sessions.json"
    legacy.write_text(json.dumps({_digest("old"): {
        "principal": {"keyId": "oidc:bob", "role": "viewer", "name": "oidc:bob"}, "identity": {"sub": "bob"},
        "expiresAt": now + 60_000, "createdAt": now, "lastSeenAt": now}}))
    async with opened(make) as st:
        o = sso(st, legacy)
        await o.open()
        assert o.session("old") is not None and o.session("old").principal.key_id == "oidc:bob"  # type: ignore[union-attr]
        for sid, expires in (("live", now + 60_000), ("expired", now - 1)):
            o.sessions[_digest(sid)] = DashboardSession(
                principal=Principal(kind="oidc", key_id="oidc:ada", role="operator", name="oidc:ada"),
                identity={"sub": "ada"}, expires_at_ms=expires, created_at_ms=now)
            await o._save(_digest(sid))
        o.session("live")
        await o._write_seen()
        assert "live" not in json.dumps(await st.doc_list("sso-sessions"))  # stored by digest, never the cookie
    assert (tmp_path / "sso-sessions.json.migrated").exists()
    async with opened(make) as st:
        o = sso(st)
        await o.open()
        assert set(o.sessions) == {_digest("old"), _digest("live")}  # the expired one was dropped
        assert o.sessions[_digest("live")].last_seen_ms >= now
        await o.end_session("old")
        assert set(await st.doc_list("sso-sessions")) == {_digest("live")}


async def test_audit(make: Any, tmp_path: Path) -> None:
    from aegisd.auth.audit import GENESIS, AuditLog, _hash

    legacy = tmp_path / "audit"
    legacy.mkdir()
    first = {"seq": 1, "ts": 1, "actor": "old", "action": "key.create", "detail": {}, "prevHash": GENESIS}
    first["hash"] = _hash(first)
    (legacy / "audit.jsonl").write_text(json.dumps(first) + "\n")
    async with opened(make) as st:
        audit = AuditLog(RecordLog(st, "audit"), legacy_dir=legacy)
        await audit.open()
        rec = audit.record("key:a", "session.create", session_id="s1", detail={"x": 1})
        assert rec["seq"] == 2 and rec["prevHash"] == first["hash"]
        assert len(await audit.read_all()) == 2  # on its way: already visible
        await audit.stored()  # what an operation awaits before it answers
        assert [r["seq"] for _, r in await st.log_read("audit")] == [1, 2]
        audit.record("system", "auth.failure", detail={"ip": "1.2.3.4"})
        await audit.close()
    assert (tmp_path / "audit.migrated" / "audit.jsonl").exists()
    async with opened(make) as st:
        audit = AuditLog(RecordLog(st, "audit"), legacy_dir=legacy)
        await audit.open()
        assert audit.record("key:a", "session.kill")["seq"] == 4  # the chain goes on
        await audit.stored()
        assert await audit.verify() == {"ok": True, "count": 4, "lastHash": (await audit.read_all())[-1]["hash"]}
        page, cursor = await audit.query(action="session.*", limit=1)
        assert [r["action"] for r in page] == ["session.create"] and cursor == 2
        assert [r["actor"] for r in (await audit.query(reverse=True))[0]] == ["key:a", "system", "key:a", "old"]


async def test_usage(make: Any, tmp_path: Path) -> None:
    from aegisd.features.metering import RETENTION_DAYS, UsageLedger, UsageRecord

    now = int(time.time() * 1000)
    old = now - (RETENTION_DAYS + 1) * 86_400_000

    def usage(i: int, ts: int) -> UsageRecord:
        return UsageRecord(ts=ts, sessionId=f"s{i}", keyId="k", agent="claude", model="m", inputTokens=i,
                           outputTokens=1, cacheReadTokens=0, cacheCreationTokens=0, totalTokens=i + 1, costUsd=0.5)
    legacy = tmp_path / "usage.jsonl"
    legacy.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in (usage(0, old), usage(1, old), usage(2, now)))
                       + b'{"torn')
    async with opened(make) as st:
        ledger = UsageLedger(RecordLog(st, "usage"), legacy_file=legacy)
        await ledger.open()
        assert [r.sessionId for r in ledger.records] == ["s2"]  # older than the retention: not moved in
        async with trio.open_nursery() as n:
            await n.start(ledger.run)
            ledger.record(usage(3, now))
            ledger.record(usage(4, now))
            with trio.fail_after(10):
                while len(await st.log_read("usage")) < 3:  # the writer task stores them
                    await trio.sleep(0.01)
            ledger.record(usage(5, old))  # (an old timestamp, to see it trimmed at the next start)
            n.cancel_scope.cancel()
        await ledger.close()
    assert (tmp_path / "usage.jsonl.migrated").exists()
    async with opened(make) as st:
        ledger = UsageLedger(RecordLog(st, "usage"), legacy_file=legacy)
        await ledger.open()
        assert [r.sessionId for r in ledger.records] == ["s2", "s3", "s4"]
        assert [r.sessionId for r in ledger.select(session_id="s3")] == ["s3"]


async def test_a_daemon_moves_an_earlier_versions_files_into_its_store(daemon_factory: Any, tmp_path: Path) -> None:
    """The files an earlier aegisd kept beside the store are read once at start, written to the store (whichever
    AEGIS_TEST_STORE picks) and renamed <name>.migrated; the API serves them from the store."""
    from aegisd.auth.audit import GENESIS, _hash
    from aegisd.features.memory import MemoryEntry
    from aegisd.features.metering import UsageRecord
    from aegisd.features.templates import Template
    from aegisd.notify.webhooks import DeadLetter

    state = tmp_path / "state"
    state.mkdir()
    now = int(time.time() * 1000)
    (state / "templates.json").write_bytes(msgspec.json.encode([Template(id="t1", name="old", createdAt=1,
                                                                         updatedAt=1)]))
    (state / "memory.json").write_bytes(msgspec.json.encode([MemoryEntry(key="ns/k", value="v", namespace="ns",
                                                                         created_at=1, updated_at=1)]))
    (state / "usage.jsonl").write_bytes(msgspec.json.encode(UsageRecord(
        ts=now, sessionId="s0", keyId=None, agent="claude", model="m", inputTokens=1, outputTokens=1,
        cacheReadTokens=0, cacheCreationTokens=0, totalTokens=2, costUsd=0.25)) + b"\n")
    (state / "webhooks-dlq.json").write_bytes(msgspec.json.encode([DeadLetter(
        timestamp=1, endpoint="http://h/x", event="session.ended", error="HTTP 500", attempts=3)]))
    (state / "audit").mkdir()
    first = {"seq": 1, "ts": 1, "actor": "old", "action": "key.create", "detail": {}, "prevHash": GENESIS}
    first["hash"] = _hash(first)
    (state / "audit" / "audit.jsonl").write_text(json.dumps(first) + "\n")
    (state / "pipelines").mkdir()
    d = await daemon_factory(memoryBridge={"enabled": True})
    assert [t["name"] for t in (await d.http.get("/v1/templates")).json()] == ["old"]
    assert (await d.http.get("/v1/memory/ns/k")).json()["entry"]["value"] == "v"
    assert [r.sessionId for r in d.daemon.usage.records] == ["s0"]
    assert [x.event for x in d.daemon.webhooks.dlq] == ["session.ended"]
    audit = (await d.http.get("/v1/audit?verify=true")).json()
    assert audit["records"][0]["actor"] == "old" and audit["integrity"]["ok"] is True
    for name in ("templates.json", "memory.json", "usage.jsonl", "webhooks-dlq.json", "audit", "pipelines"):
        assert not (state / name).exists() and (state / f"{name}.migrated").exists(), name
    assert len(await d.daemon.store.doc_list("templates")) == 1


async def test_keys(make: Any, tmp_path: Path) -> None:
    from aegisd.auth import KeyStore
    from aegisd.auth._keys import KeyInfo, secret_digest

    legacy = tmp_path / "keys.json"
    old = KeyInfo(id="k0", name="old", role="viewer", hash=secret_digest("aegis_old"), createdAt=1)
    legacy.write_text(json.dumps({"version": 1, "keys": [dataclasses.asdict(old)]}))
    async with opened(make) as st:
        keys = KeyStore(Collection(st, "keys"), legacy_file=legacy)
        await keys.open()
        assert keys.authenticate("aegis_old").id == "k0"  # type: ignore[union-attr]
        a, secret_a = await keys.create("a", role="operator")
        b, _ = await keys.create("b", role="admin")
        await keys.set_quotas(a.id, {"maxSessions": 2})
        rotated, secret_a2 = await keys.rotate(a.id, grace_seconds=60)
        assert await keys.revoke(b.id) and not await keys.revoke(b.id)
        assert keys.authenticate(secret_a2) is not None and keys.authenticate(secret_a) is not None  # grace
        await keys.flush_used()
    assert (tmp_path / "keys.json.migrated").exists()
    async with opened(make) as st:
        keys = KeyStore(Collection(st, "keys"), legacy_file=legacy)
        await keys.open()
        assert [k.name for k in keys.list()] == ["old", "a"]
        got = keys.get(a.id)
        assert got.quotas == {"maxSessions": 2} and got.hash == rotated.hash and got.lastUsedAt is not None
        assert keys.authenticate(secret_a2) is not None
        # another writer of the same store: refresh() sees it, and says so
        changes: list[int] = []
        keys.on_change = lambda: changes.append(1)
        other = KeyStore(Collection(st, "keys"))
        await other.open()
        c, secret_c = await other.create("c")
        assert keys.authenticate(secret_c) is None
        assert await keys.refresh() and changes == [1] and keys.authenticate(secret_c) is not None
        assert not await keys.refresh()  # nothing new
        await other.revoke(c.id)
        assert await keys.refresh() and keys.authenticate(secret_c) is None


async def test_a_second_migration_keeps_the_first_ones_file(tmp_path: Path) -> None:
    from aegisd.store import migrate_legacy

    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)
    for i in (1, 2):
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "f").write_bytes(b"%d" % i)
        assert await migrate_legacy(tmp_path / "old", lambda p: (p / "f").read_bytes(), write)
    assert written == [b"1", b"2"] and not await migrate_legacy(tmp_path / "old", lambda p: b"", write)
    assert (tmp_path / "old.migrated" / "f").read_bytes() == b"1"
    assert (tmp_path / "old.migrated.2" / "f").read_bytes() == b"2"


# ---- a retried transcript append (its answer lost) stores nothing twice ---------------------------------------
@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_a_retried_transcript_append_is_stored_once(kind: str, tmp_path: Path) -> None:
    from aegisd.core.models import TranscriptEntry

    if not (PG if kind == "postgres" else REDIS):
        pytest.skip(f"set AEGIS_TEST_{'PG' if kind == 'postgres' else 'REDIS'}_URL to run on {kind}")
    entries = [TranscriptEntry(id=i, role="user", contentType="text", text=f"e{i}", timestamp=1) for i in (1, 2)]
    async with _factory(kind, tmp_path) as make, opened(make) as st:
        await st.append_transcript("s1", entries)
        if kind == "postgres":  # what a lost answer leaves: the positions given back, then the same write again
            st._tcount["s1"] = 0  # type: ignore[attr-defined]
        await st.append_transcript("s1", entries)
        assert [e.id for e in await st.read_transcript("s1")] == [1, 2]
        if kind == "postgres":
            assert await st.transcript_count("s1") == 2
        more = [TranscriptEntry(id=3, role="assistant", contentType="text", text="e3", timestamp=1)]
        await st.append_transcript("s1", more)  # and the next append goes on after them
        assert [e.id for e in await st.read_transcript("s1")] == [1, 2, 3]
