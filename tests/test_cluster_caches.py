"""Several nodes on one store (issue 15): what one node changes reaches the caches of another once the store
reports it (aegisd/app/_changes.py ChangeRouter, fed by the PostgreSQL store's notifications).

Two "nodes" here are two instances of each feature on ONE opened store (memory, file, and PostgreSQL when
AEGIS_TEST_PG_URL is set: its single-writer lock refuses a second open of the same tables, so both instances share
one PostgresStore object), each with its own router, which the tests notify as the store would."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from aegisd.app._changes import ChangeRouter
from aegisd.auth import CredentialWatch, KeyStore
from aegisd.auth._keys import secret_digest
from aegisd.auth.audit import AuditLog
from aegisd.auth.oidc import DashboardSession, Oidc, _digest
from aegisd.auth.principal import Credential, Principal
from aegisd.core.config import load_config
from aegisd.core.errors import NotFound, QuotaExceeded, StoreUnavailable
from aegisd.core.pricing import UsageRecord
from aegisd.features.memory import MemoryStore as Memory
from aegisd.features.metering import UsageLedger
from aegisd.features.pipelines import PipelineManager, PipelineSpec, StageSpec
from aegisd.features.quotas import QuotaGuard, Quotas
from aegisd.features.templates import TemplateFields, TemplateStore
from aegisd.notify.webhooks import DeadLetter, Webhooks
from aegisd.store import Collection, RecordLog, Store, open_store
from aegisd.store._memory import MemoryStore

from .conftest import drop_store

PG = os.environ.get("AEGIS_TEST_PG_URL")
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("postgres", id="postgres",
                 marks=pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set (a PostgreSQL to test against)")),
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind, name = request.param, f"cc_{uuid.uuid4().hex[:12]}"
    st: Store
    if kind == "memory":
        st = MemoryStore()
    else:
        values: dict[str, Any] = {"sessionStore": kind, "stateDir": str(tmp_path / "state")}
        if kind == "postgres":
            values.update(postgresUrl=PG, pgTable=name)
        cfg = load_config(env={}, config_path=None, overrides=values, cwd=tmp_path)
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        st = open_store(cfg)
    await st.open()
    try:
        yield st
    finally:
        await st.close()
        if kind == "postgres":
            await trio.to_thread.run_sync(drop_store, kind, name)


class _Bus:
    """What the pipeline manager needs of the event bus here: nothing happens on it."""

    def publish(self, *a: Any) -> None:
        pass

    async def subscribe(self, **kw: Any) -> Any:
        class Sub:
            closed = overflowed = False

            def close(self) -> None:
                pass

            def __aiter__(self) -> Sub:
                return self

            async def __anext__(self) -> Any:
                await trio.sleep_forever()
        return Sub()


class Node:
    """The features of one node that keep what they read from the store, and its change router."""

    def __init__(self, st: Any, tmp_path: Path, **router: Any) -> None:
        self.keys = KeyStore(Collection(st, "keys"))
        self.templates = TemplateStore(Collection(st, "templates"))
        self.memory = Memory(Collection(st, "memory"))
        self.usage = UsageLedger(RecordLog(st, "usage"))
        self.quotas_of: dict[str, Quotas] = {}
        self.quotas = QuotaGuard(self.usage, lambda key_id: 0, self.quotas_of.get)
        self.audit = AuditLog(RecordLog(st, "audit"))
        self.webhooks = Webhooks(bus=None, records={}, alert=lambda *a, **k: None, endpoints=[],  # type: ignore[arg-type]
                                 dlq=RecordLog(st, "webhooks-dlq"))
        sessions = SimpleNamespace(workdirs=SimpleNamespace(validate=lambda p: p), records={}, runners={})
        self.pipelines = PipelineManager(sessions=sessions, bus=_Bus(), verifier=None,  # type: ignore[arg-type]
                                         collection=Collection(st, "pipelines"), create_session=self._stage)
        oidc_cfg = load_config(env={}, config_path=None, overrides={"stateDir": str(tmp_path / "s")},
                               cwd=tmp_path).oidc
        self.oidc = Oidc(oidc_cfg, lambda: "http://x", Collection(st, "sso-sessions"))
        self.changed = 0  # on_change calls of the keys and SSO sessions (the credential watcher's wake-up)
        self.keys.on_change = self.oidc.on_change = self._changed
        self.router = ChangeRouter.of(self, **router)  # type: ignore[arg-type]

    def _changed(self) -> None:
        self.changed += 1

    async def _stage(self, p: Any, s: Any) -> Any:
        await trio.sleep_forever()  # a stage's session starts, slowly: the pipeline stays running

    async def open(self) -> None:
        await self.keys.open()
        await self.templates.open()
        await self.memory.open()
        await self.usage.open()
        await self.audit.open()
        await self.webhooks.open()
        await self.oidc.open()


@contextlib.asynccontextmanager
async def nodes(st: Any, tmp_path: Path, n: int = 2, **router: Any) -> AsyncIterator[list[Node]]:
    """``n`` nodes on ``st``, opened, their routers and pipeline managers running."""
    out = [Node(st, tmp_path, **router) for _ in range(n)]
    async with trio.open_nursery() as nursery:
        for node in out:
            await node.open()
            await nursery.start(node.router.run)
            await nursery.start(node.pipelines.run)
        yield out
        nursery.cancel_scope.cancel()


async def settled(router: ChangeRouter, timeout: float = 10) -> None:
    """Every reload noted so far is done."""
    with trio.fail_after(timeout):
        await router.idle.wait()


# ---- features ----------------------------------------------------------------------------------------------------
async def test_keys_created_rotated_and_revoked_on_another_node(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        key, secret = await a.keys.create("ci", role="operator")
        assert b.keys.authenticate(secret) is None  # b has not heard of it yet
        b.router.doc_changed("keys", key.id)
        await settled(b.router)
        assert (found := b.keys.authenticate(secret)) is not None and found.id == key.id

        _, new_secret = await a.keys.rotate(key.id, grace_seconds=0)
        b.router.doc_changed("keys", key.id)
        await settled(b.router)
        assert b.keys.authenticate(secret) is None and b.keys.authenticate(new_secret) is not None

        # a stream opened on b with the key: its credential ends when a revokes the key
        watch = CredentialWatch(b.keys, lambda: None)
        principal = Principal(kind="key", key_id=key.id, role="operator", name="key:ci",
                              credential=Credential("key", secret_digest(new_secret)))
        assert watch.ended(principal) is None
        changed = b.changed
        assert await a.keys.revoke(key.id)
        b.router.doc_changed("keys", key.id)
        await settled(b.router)
        assert b.keys.authenticate(new_secret) is None
        assert watch.ended(principal) == "the API key was revoked"
        assert b.changed > changed  # on_change: the credential watcher wakes and ends the stream
        with pytest.raises(NotFound):
            b.keys.get(key.id)
        reloads = b.router.reloads
        b.router.doc_changed("keys", key.id)  # told again (its own or a repeated notification): harmless
        await settled(b.router)
        assert b.router.reloads == reloads + 1 and b.keys.list() == []


async def test_a_stale_node_does_not_undo_a_revocation_or_rotation(store: Store, tmp_path: Path) -> None:
    """b used the key (lastUsedAt to write) before it heard of a's change: writing the timestamp keeps a's."""
    async with nodes(store, tmp_path) as (a, b):
        k1, s1 = await a.keys.create("one")
        k2, s2 = await a.keys.create("two")
        b.router.doc_changed("keys", None)
        await settled(b.router)
        assert b.keys.authenticate(s1) is not None and b.keys.authenticate(s2) is not None
        assert await a.keys.revoke(k1.id)
        rotated, _ = await a.keys.rotate(k2.id, grace_seconds=0)
        await b.keys.flush_used()  # before b heard of either
        assert await store.doc_get("keys", k1.id) is None
        doc = await store.doc_get("keys", k2.id)
        assert doc["hash"] == rotated.hash and doc["lastUsedAt"] is not None


async def test_templates_across_nodes(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        t = await a.templates.create(TemplateFields(name="review", prompt="look"), owner=None)
        with pytest.raises(NotFound):
            b.templates.get(t.id)
        b.router.doc_changed("templates", t.id)
        await settled(b.router)
        assert b.templates.get(t.id).prompt == "look"
        await a.templates.update(t.id, TemplateFields(prompt="look again"))
        b.router.doc_changed("templates", t.id)
        await settled(b.router)
        assert b.templates.get(t.id).prompt == "look again"
        t2 = await a.templates.create(TemplateFields(name="other"), owner="k1")
        await a.templates.delete(t.id)
        b.router.doc_changed("templates", None)  # anything in the collection (e.g. after a reconnect)
        await settled(b.router)
        assert [x.id for x in b.templates.list()] == [t2.id]


async def test_memory_across_nodes(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        await a.memory.set("proj/notes", "from a", owner="k1")
        await a.memory.set("proj/notes", "master's", owner=None)
        (doc_key,) = [k for k, v in (await store.doc_list("memory")).items() if v["ownerKeyId"] == "k1"]
        b.router.doc_changed("memory", doc_key)
        await settled(b.router)
        assert b.memory.get("proj/notes", owner="k1").value == "from a"
        with pytest.raises(NotFound):  # only the entry that was reported
            b.memory.get("proj/notes", owner=None)
        await a.memory.delete("proj/notes", owner="k1")
        b.router.doc_changed("memory", doc_key)
        await settled(b.router)
        with pytest.raises(NotFound):
            b.memory.get("proj/notes", owner="k1")
        b.router.doc_changed("memory", None)
        await settled(b.router)
        assert [e.value for e in b.memory.list(owners=lambda o: True)] == ["master's"]


def _turn(key_id: str, tokens: int, session: str = "s1") -> UsageRecord:
    return UsageRecord(ts=int(time.time() * 1000), sessionId=session, keyId=key_id, totalTokens=tokens)


async def test_usage_on_another_node_counts_toward_the_quota_once(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        b.quotas_of["k1"] = Quotas(maxTokensPerWindow=1000)
        a.usage.record(_turn("k1", 600))
        await a.usage.stored()
        assert b.quotas.usage_of("k1")["tokensInWindow"] == 0  # not heard of yet
        b.router.log_appended("usage")
        await settled(b.router)
        assert b.quotas.usage_of("k1")["tokensInWindow"] == 600
        b.quotas.check_send("k1")  # 600 of 1000

        b.usage.record(_turn("k1", 300))  # b's own, counted at once
        await b.usage.stored()
        for _ in range(5):  # notified of its own append, and again: never counted twice
            b.router.log_appended("usage")
            await settled(b.router)
        assert b.quotas.usage_of("k1")["tokensInWindow"] == 900

        a.usage.record(_turn("k1", 200))
        await a.usage.stored()
        b.router.log_appended("usage")
        await settled(b.router)
        with pytest.raises(QuotaExceeded):  # 1100 of 1000, 800 of them through a
            b.quotas.check_send("k1")


async def test_usage_interleaved_appends_are_counted_exactly_once_on_every_node(store: Store,
                                                                                 tmp_path: Path) -> None:
    async with nodes(store, tmp_path, n=3) as trio_nodes:
        amounts = [1, 10, 100, 1000, 10000, 100000, 1000000]
        for i, amount in enumerate(amounts):  # b, a, c, b, a... each stored before the next: seqs interleave
            node = trio_nodes[(i + 1) % 3]
            node.usage.record(_turn("k", amount, session=f"s{i}"))
            await node.usage.stored()
            if i == 3:
                for n in trio_nodes:  # caught up half way through, too
                    await n.usage.catch_up()
        for n in trio_nodes:
            n.router.log_appended("usage")
            n.router.resync()
        for n in trio_nodes:
            await settled(n.router)
            assert sum(r.totalTokens for r in n.usage.select(key_id="k")) == sum(amounts)
            assert len(n.usage.records) == len(amounts)


async def test_a_pipeline_run_by_another_node_shows_its_stored_state(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        p = await a.pipelines.create(PipelineSpec(name="build", workDir=str(tmp_path), stages=[
            StageSpec(prompt="one"), StageSpec(prompt="two", dependsOn=["stage-1"])]), owner="k1")
        assert p.id in a.pipelines.driving
        with pytest.raises(NotFound):
            b.pipelines.get(p.id)
        b.router.doc_changed("pipelines", p.id)
        await settled(b.router)
        got = b.pipelines.get(p.id)
        assert got.name == "build" and got.status == "running" and [s.name for s in got.stages] == [
            "stage-1", "stage-2"]
        assert list(b.pipelines.records) == [p.id] and p.id not in b.pipelines.driving  # shown, not run here

        # a moves it on (its stored state changes): b shows the new state
        mine = a.pipelines.get(p.id)
        mine.stages[0].status = "completed"
        await a.pipelines._save(mine)
        b.router.doc_changed("pipelines", None)
        await settled(b.router)
        assert b.pipelines.get(p.id).stages[0].status == "completed"

        # a pipeline a node runs itself is never replaced by what the store says
        doc = await store.doc_get("pipelines", p.id)
        doc["name"] = "changed behind a's back"
        await store.doc_put("pipelines", p.id, doc)
        a.router.doc_changed("pipelines", p.id)
        a.router.doc_changed("pipelines", None)
        await settled(a.router)
        assert a.pipelines.get(p.id) is mine and mine.name == "build"

        await store.doc_delete("pipelines", p.id)
        b.router.doc_changed("pipelines", p.id)
        await settled(b.router)
        with pytest.raises(NotFound):
            b.pipelines.get(p.id)


async def test_sso_sessions_across_nodes(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        now = int(time.time() * 1000)
        cookie = "dsh_cookie"
        a.oidc.sessions[_digest(cookie)] = DashboardSession(
            principal=Principal(kind="oidc", key_id="oidc:ada", role="operator", name="oidc:ada",
                                credential=Credential("sso", _digest(cookie))),
            identity={"sub": "ada"}, expires_at_ms=now + 60_000, created_at_ms=now)
        await a.oidc._save(_digest(cookie))
        assert b.oidc.session(cookie) is None
        b.router.doc_changed("sso-sessions", _digest(cookie))
        await settled(b.router)
        assert (s := b.oidc.session(cookie)) is not None and s.principal.key_id == "oidc:ada"
        changed = b.changed
        await a.oidc.end_session(cookie)  # signed out through a
        b.router.doc_changed("sso-sessions", _digest(cookie))
        await settled(b.router)
        assert b.oidc.session(cookie) is None and b.changed > changed


async def test_dead_letters_and_audit_across_nodes(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        letter = DeadLetter(timestamp=1, endpoint="http://h/x", event="session.ended", error="HTTP 500", attempts=3,
                            payload={})
        await a.webhooks._save_dead_letter(letter)
        for _ in range(3):
            b.router.log_appended("webhooks-dlq")
            await settled(b.router)
        assert b.webhooks.dlq == [letter]

        # the audit trail: reads come from the store; the chain goes on after the other node's records
        a.audit.record("a", "one")
        assert await a.audit.stored()
        b.router.log_appended("audit")
        await settled(b.router)
        b.audit.record("b", "two")
        assert await b.audit.stored()
        pending = b.audit.record("b", "three")  # made before b heard of a's next record: linked again
        a.router.log_appended("audit")
        await settled(a.router)
        a.audit.record("a", "four")
        assert await a.audit.stored()
        b.router.log_appended("audit")
        await settled(b.router)
        assert await b.audit.stored()
        assert pending["seq"] == 4
        assert [r["action"] for r in await a.audit.read_all()] == ["one", "two", "four", "three"]
        assert (await a.audit.verify())["ok"] and (await b.audit.verify())["ok"]


async def test_resync_reloads_everything(store: Store, tmp_path: Path) -> None:
    async with nodes(store, tmp_path) as (a, b):
        key, secret = await a.keys.create("ci")
        t = await a.templates.create(TemplateFields(name="t"), owner=None)
        await a.memory.set("ns/k", "v", owner=None)
        a.usage.record(_turn("k1", 5))
        await a.usage.stored()
        b.router.resync()
        await settled(b.router)
        assert b.keys.authenticate(secret) is not None and b.templates.get(t.id).name == "t"
        assert b.memory.get("ns/k", owner=None).value == "v" and b.quotas.usage_of("k1")["tokensInWindow"] == 5


# ---- the router ------------------------------------------------------------------------------------------------
class CountingStore(MemoryStore):
    """Counts reads; ``hold`` keeps them waiting (a slow store); ``failures`` of them raise StoreUnavailable
    (``boom`` of them raise something unexpected) first."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.hold: trio.Event | None = None
        self.reading = trio.Event()
        self.failures = 0
        self.boom = 0

    async def _read(self) -> None:
        self.reads += 1
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.boom:
            self.boom -= 1
            raise RuntimeError("a bug")
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the store is away")

    async def doc_get(self, collection: str, key: str) -> Any | None:
        await self._read()
        return await super().doc_get(collection, key)

    async def doc_list(self, collection: str) -> dict[str, Any]:
        await self._read()
        return await super().doc_list(collection)

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        await self._read()
        return await super().log_read(log, after, limit)


async def test_bursts_are_coalesced_and_a_slow_store_blocks_no_caller(tmp_path: Path) -> None:
    st = CountingStore()
    async with nodes(st, tmp_path) as (a, b):
        t = await a.templates.create(TemplateFields(name="t"), owner=None)
        st.reads = 0
        for _ in range(100):  # one document, a hundred times
            b.router.doc_changed("templates", t.id)
        await settled(b.router)
        assert st.reads == 1 and b.templates.get(t.id).name == "t"

        st.reads = 0
        for i in range(100):  # a hundred documents of one collection: the collection, once
            b.router.doc_changed("keys", f"k{i}")
        for _ in range(100):
            b.router.log_appended("usage")
        await settled(b.router)
        assert st.reads == 2

        # the store hangs in a reload: notifications keep returning at once and pile up into one more reload
        st.reads, st.hold, st.reading = 0, trio.Event(), trio.Event()
        b.router.doc_changed("templates", None)
        with trio.fail_after(5):
            await st.reading.wait()
        with trio.fail_after(1):
            for i in range(100):
                b.router.doc_changed("templates", f"t{i % 3}")
                b.router.log_appended("usage")
                await trio.lowlevel.checkpoint()
        st.hold.set()
        await settled(b.router)
        assert st.reads <= 1 + 3 + 1  # the one that hung; then each noted template and the log, once


async def test_a_failed_reload_is_retried_and_the_router_survives(tmp_path: Path) -> None:
    st = CountingStore()
    async with nodes(st, tmp_path, retry_s=0.01) as (a, b):
        t = await a.templates.create(TemplateFields(name="t"), owner=None)
        st.reads, st.failures = 0, 3
        b.router.doc_changed("templates", t.id)
        await settled(b.router)
        assert b.router.failures == 3 and st.reads == 4
        assert b.templates.get(t.id).name == "t"

        st.boom = 1  # not a store error (a bug in a reload): logged, retried, the router goes on
        a.usage.record(_turn("k1", 7))
        await a.usage.stored()
        b.router.log_appended("usage")
        await settled(b.router)
        assert b.router.failures == 4 and b.quotas.usage_of("k1")["tokensInWindow"] == 7

        await a.templates.delete(t.id)
        b.router.doc_changed("templates", t.id)  # still running
        await settled(b.router)
        assert b.templates.list() == []


async def test_unknown_names_are_ignored_and_hooks_attach_only_where_the_store_has_them() -> None:
    router = ChangeRouter(docs={}, logs={})
    router.doc_changed("sessions", "x")  # the store reports what no cache here keeps
    router.log_appended("events")
    assert router.idle.is_set()
    assert router.attach(MemoryStore()) == []

    class Notifying(MemoryStore):
        on_doc_changed: Any = None
        on_log_appended: Any = None
        on_resync: Any = None

    st = Notifying()
    assert router.attach(st) == ["on_doc_changed", "on_log_appended", "on_resync"]
    assert st.on_doc_changed == router.doc_changed and st.on_resync == router.resync


# ---- in the daemon -------------------------------------------------------------------------------------------
async def test_the_daemon_routes_its_stores_notifications(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch,
                                                           workdir: Path) -> None:
    """A store with the notification hooks (as the PostgreSQL store will have) calls the daemon's router: what
    another node wrote to the shared store shows through the API."""
    from aegisd.store._file import FileStore

    for hook in ("on_doc_changed", "on_log_appended", "on_resync"):
        monkeypatch.setattr(FileStore, hook, None, raising=False)
    h = await daemon_factory(sessionStore="file")
    d = h.daemon
    assert d.store.on_doc_changed == d.changes.doc_changed and d.store.on_resync == d.changes.resync
    ts = int(time.time() * 1000)
    tid = str(uuid.uuid4())
    await d.store.doc_put("templates", tid, {"id": tid, "name": "from node b", "createdAt": ts, "updatedAt": ts,
                                             "prompt": "say:hi", "workDir": str(workdir)})  # another node's write
    assert (await h.http.get(f"/v1/templates/{tid}")).status_code == 404
    d.store.on_doc_changed("templates", tid)
    await settled(d.changes)
    r = await h.http.get(f"/v1/templates/{tid}")
    assert r.status_code == 200 and r.json()["name"] == "from node b"
    await d.store.log_append("usage", {"ts": ts, "sessionId": "elsewhere", "keyId": None, "totalTokens": 42})
    d.store.on_log_appended("usage")
    await settled(d.changes)
    assert sum(rec.totalTokens for rec in d.usage.select(session_id="elsewhere")) == 42
