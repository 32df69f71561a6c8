"""The store may fail; the daemon may not (issue 13): connections to the REAL PostgreSQL and Redis are cut under a
running daemon (backends terminated, CLIENT KILL, a network cut held for seconds), and the daemon and its sessions
live on, health says degraded then ok, an alert fires once per outage, an operation that needs a durable write
answers 503 STORE_UNAVAILABLE with Retry-After, and everything acknowledged is stored. The services come from
`. scripts/test-env.sh` (AEGIS_TEST_PG_URL / AEGIS_TEST_REDIS_URL); without them those tests are skipped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from aegisd.core.config import AlertingConfig
from aegisd.core.errors import StoreUnavailable, error_from_code
from aegisd.core.states import State
from aegisd.notify.alerts import Alerts
from aegisd.store import StoreHealth, until_stored
from aegisd.store._file import FileStore
from aegisd.surfaces.http.errors import envelope

from .conftest import drop_store

PG = os.environ.get("AEGIS_TEST_PG_URL")
REDIS = os.environ.get("AEGIS_TEST_REDIS_URL")
SERVER_STORES = [
    pytest.param("postgres", marks=pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set")),
    pytest.param("redis", marks=pytest.mark.skipif(not REDIS, reason="AEGIS_TEST_REDIS_URL not set")),
]


# ---- a TCP proxy between the daemon and the server: the test cuts, and restores, the network --------------------
class Proxy:
    """Forwards 127.0.0.1:<port> to the server. ``cut()`` closes every connection and refuses new ones until
    ``restore()``; ``upstream_ports`` are the local ports of its connections to the server (so a test terminates
    exactly this daemon's backends, not another test's)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.target = host, port
        self.port = 0
        self.down = False
        self.frozen = False  # connections stay open but nothing gets through (a network that drops packets)
        self.upstream_ports: set[int] = set()
        self._pairs: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.down:
            await client.aclose()
            return
        if self.frozen:
            async with client:
                await trio.sleep_forever()
        try:
            upstream = await trio.open_tcp_stream(self.host, self.target)
        except OSError:
            await client.aclose()
            return
        port = upstream.socket.getsockname()[1]
        self.upstream_ports.add(port)
        scope = trio.CancelScope()
        self._pairs.add(scope)

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                while data := await src.receive_some(65536):
                    if not self.frozen:
                        await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            scope.cancel()
        try:
            with scope:
                async with trio.open_nursery() as n:
                    n.start_soon(pump, client, upstream)
                    n.start_soon(pump, upstream, client)
        finally:
            self._pairs.discard(scope)
            self.upstream_ports.discard(port)
            with trio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()

    def cut(self) -> None:
        self.down = True
        for scope in list(self._pairs):
            scope.cancel()

    def restore(self) -> None:
        self.down = self.frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def _server(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def drop_connections(kind: str, ports: set[int]) -> int:
    """What a server restart or failover does to the daemon: PostgreSQL terminates its backends, Redis kills its
    clients. Only the connections from ``ports`` (this test's daemon). Returns how many."""
    if not ports:
        return 0
    if kind == "postgres":
        import psycopg

        with psycopg.connect(PG or "", autocommit=True) as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
                                "LIKE 'aegisd%%' AND client_port = ANY(%s)", (list(ports),)).fetchall()
        return len(rows)
    import redis

    n = 0
    with redis.Redis.from_url(REDIS or "") as r:
        for client in r.client_list():
            host, _, port = str(client.get("addr", "")).rpartition(":")
            if port.isdigit() and int(port) in ports:
                n += int(r.client_kill_filter(_id=client["id"]))
    return n


def _store_env(kind: str, proxy: Proxy, name: str) -> dict[str, Any]:
    if kind == "postgres":
        return {"sessionStore": "postgres", "postgresUrl": proxy.url(PG or ""), "pgTable": name}
    return {"sessionStore": "redis", "redisUrl": proxy.url(REDIS or ""), "redisKeyPrefix": name}


async def _start_proxy(nursery: trio.Nursery, kind: str) -> Proxy:
    host, port = _server(PG or "", 5432) if kind == "postgres" else _server(REDIS or "", 6379)
    proxy = Proxy(host, port)
    await nursery.start(proxy.run)
    return proxy


async def _stop_all(*handles: Any) -> None:
    """Stop the test's daemons (before its tables/keys are dropped)."""
    for h in handles:
        if h is not None:
            h.shutdown.set()
            with trio.fail_after(20):
                await h.done.wait()


async def _wait(pred: Any, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not await pred():
            await trio.sleep(0.05)


# ---- units --------------------------------------------------------------------------------------------------------
def test_store_unavailable_is_503_with_retry_after() -> None:
    exc = StoreUnavailable("the postgres store is unavailable: connection refused")
    status, body, headers = envelope(exc, "rid")
    assert status == 503 and body["code"] == "STORE_UNAVAILABLE" and headers["Retry-After"] == "5"
    assert isinstance(error_from_code("STORE_UNAVAILABLE", "x"), StoreUnavailable)  # the CLI rebuilds it


async def test_until_stored_retries_in_order_and_gives_up_only_when_told(autojump_clock: Any) -> None:
    health = StoreHealth("test")
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) < 4:
            health.down("server gone")
            raise StoreUnavailable("server gone")
        health.up()
        return "stored"
    assert await until_stored(health, flaky, what="x") == "stored" and len(calls) == 4

    async def never() -> None:
        raise StoreUnavailable("still gone")
    async with trio.open_nursery() as n:
        failed = trio.Event()

        async def waiter() -> None:
            with pytest.raises(StoreUnavailable):
                await until_stored(health, never, what="y")
            failed.set()
        n.start_soon(waiter)
        await trio.sleep(60)  # an outage of a minute: still waiting
        assert not failed.is_set()
        health.give_up("shutdown")
        await failed.wait()


def test_store_alert_fires_once_per_outage() -> None:
    alerts = Alerts(AlertingConfig())
    for _ in range(5):
        alerts.store_changed(False, "connection refused")
    assert alerts.stats()["trackers"]["store_unavailable"]["fired"] == 1
    alerts.store_changed(True, None)
    alerts.store_changed(False, "again")
    assert alerts.stats()["trackers"]["store_unavailable"]["fired"] == 2


async def test_file_store_whose_directory_is_removed_is_degraded_not_dead(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state")
    await store.open()
    try:
        await store.doc_put("c", "k", {"v": 1})
        assert store.health.ok
        await trio.to_thread.run_sync(shutil.rmtree, tmp_path / "state")
        with pytest.raises(StoreUnavailable, match="cannot write"):
            await store.doc_put("c", "k", {"v": 2})
        assert store.health.status == "degraded" and "No such file" in (store.health.reason or "")
        for sub in ("sessions", "transcripts", "events", "docs", "logs"):
            (tmp_path / "state" / sub).mkdir(parents=True)
        await store.doc_put("c", "k", {"v": 3})
        assert store.health.ok and await store.doc_get("c", "k") == {"v": 3}
    finally:
        await store.close()


# ---- the real servers under a running daemon ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SERVER_STORES)
async def test_connections_dropped_mid_workload(kind: str, nursery: trio.Nursery, daemon_factory: Any,
                                                workdir: Path, tmp_path: Path) -> None:
    """Backends terminated / clients killed again and again while prompts run: the daemon and its session live
    on, every acknowledged prompt is in the transcript, and health ends ok."""
    name = f"f{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    proxy = await _start_proxy(nursery, kind)
    d = d2 = None
    try:
        d = await daemon_factory(**_store_env(kind, proxy, name))
        s = await d.create(workdir, prompt="say:first")
        sid = s["id"]
        await d.wait_status(sid, State.IDLE, timeout=20)
        acked: list[str] = []
        refused = 0
        drops = 0

        async def killer() -> None:
            nonlocal drops
            for _ in range(6):
                await trio.sleep(0.3)
                drops += await trio.to_thread.run_sync(drop_connections, kind, set(proxy.upstream_ports))

        async with trio.open_nursery() as n:
            n.start_soon(killer)
            for i in range(30):
                text = f"say:reply {i}"
                for _ in range(3):  # as a client does: a refused prompt is sent again once the store is back
                    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": text})
                    if r.status_code != 503:
                        break
                    # refused, never acknowledged: allowed while the lock is taken again
                    assert r.json()["code"] == "STORE_UNAVAILABLE" and r.headers["Retry-After"]
                    refused += 1
                    await d.daemon.store.health.wait_recovered(int(r.headers["Retry-After"]))
                if r.status_code == 503:
                    continue
                assert r.status_code == 200, r.text
                acked.append(text)
                await trio.sleep(0.05)
        assert drops > 0 and len(acked) >= 15, (drops, len(acked), refused)
        assert d.daemon.manager.runners.get(sid) is not None  # the session lives on

        async def settled() -> bool:
            r = (await d.http.get(f"/v1/sessions/{sid}")).json()
            return bool(r["status"] == "idle" and d.daemon.manager.runners[sid].queue_length == 0
                        and d.daemon.store.health.ok)
        await _wait(settled, 60, "the session to settle")
        msgs = (await d.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
        users = [m["text"] for m in msgs if m["role"] == "user"]
        assert [t for t in acked if t not in users] == []  # acknowledged means stored
        said = {m["text"] for m in msgs if m["role"] == "assistant"}
        assert {t.removeprefix("say:") for t in acked} <= said
        health = (await d.http.get("/v1/health")).json()
        assert health["store"] == kind and health["status"] == "ok"
        # and what was stored is there for the next daemon
        d.shutdown.set()
        with trio.fail_after(20):
            await d.done.wait()
        d2 = await daemon_factory(**_store_env(kind, proxy, name))
        msgs2 = (await d2.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
        assert [t for t in acked if t not in [m["text"] for m in msgs2 if m["role"] == "user"]] == []
    finally:
        await _stop_all(d, d2)
        await trio.to_thread.run_sync(drop_store, kind, name)


async def _control(sock: Path, op: str, params: dict[str, Any]) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(sock))
    async with stream:
        await stream.send_all(json.dumps({"id": 1, "op": op, "params": params}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk
            buf += chunk
    return json.loads(buf.split(b"\n")[0])  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", SERVER_STORES)
async def test_outage_held_gives_503_and_one_alert(kind: str, nursery: trio.Nursery, daemon_factory: Any,
                                                   workdir: Path, tmp_path: Path) -> None:
    """The network to the server cut for seconds: health degraded with the reason, one alert, 503
    STORE_UNAVAILABLE + Retry-After (HTTP) and the same code on the control socket; nothing acknowledged; the
    running session lives on and everything resumes when the server is back."""
    name = f"o{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    proxy = await _start_proxy(nursery, kind)
    d = None
    try:
        d = await daemon_factory(**_store_env(kind, proxy, name))
        s = await d.create(workdir, prompt="say:before")
        sid = s["id"]
        await d.wait_status(sid, State.IDLE, timeout=20)
        proxy.cut()

        async def degraded() -> bool:
            return bool((await d.http.get("/v1/health")).json()["store"] == "degraded")
        await _wait(degraded, 20, "health to say degraded")
        health = (await d.http.get("/v1/health")).json()
        assert health["status"] == "degraded" and health["storeKind"] == kind and health["storeReason"]
        for _ in range(3):
            r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
            assert r.status_code == 503 and r.json()["code"] == "STORE_UNAVAILABLE", r.text
            assert int(r.headers["Retry-After"]) > 0
            r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:during"})
            assert r.status_code == 503 and r.json()["code"] == "STORE_UNAVAILABLE", r.text
        frame = await _control(d.daemon.config.socket_path, "session.send", {"id": sid, "text": "say:during"})
        assert frame["ok"] is False and frame["error"]["code"] == "STORE_UNAVAILABLE"
        await trio.sleep(2)  # held: still one alert
        stats = d.daemon.alerts.stats()["trackers"]["store_unavailable"]
        assert stats["fired"] == 1 and stats["lastDetail"]
        assert d.daemon.manager.runners.get(sid) is not None

        proxy.restore()

        async def ok() -> bool:
            return bool((await d.http.get("/v1/health")).json()["store"] == kind)
        await _wait(ok, 30, "health to say ok")
        r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:after"})
        assert r.status_code == 200, r.text
        msgs: list[dict[str, Any]] = []

        async def answered() -> bool:
            nonlocal msgs
            msgs = (await d.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
            return any(m["role"] == "assistant" and m["text"] == "after" for m in msgs)
        await _wait(answered, 20, "the answer after the outage")
        users = [m["text"] for m in msgs if m["role"] == "user"]
        assert "say:after" in users and "say:during" not in users  # refused means not done
        assert d.daemon.alerts.stats()["trackers"]["store_unavailable"]["fired"] == 1
    finally:
        proxy.restore()
        await _stop_all(d)
        await trio.to_thread.run_sync(drop_store, kind, name)


@pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set")
async def test_postgres_node_that_loses_its_lease_is_fenced(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A node whose connections are cut cannot renew its lease: it stops its agents before the lease can have
    expired (on_fenced(None)) and refuses every write for its sessions; another node claims them once the lease
    expired; when the first is back it joins again and never writes for the sessions it lost."""
    from aegisd.core.config import load_config
    from aegisd.core.errors import SessionFenced
    from aegisd.core.models import SessionRecord, TranscriptEntry
    from aegisd.store import NodeSpec
    from aegisd.store._postgres import PostgresStore

    name = f"l{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    proxy = await _start_proxy(nursery, "postgres")

    def store(url: str, node: str) -> PostgresStore:
        cfg = load_config(env={}, config_path=None, overrides={
            "stateDir": str(tmp_path / node), "sessionStore": "postgres", "postgresUrl": url, "pgTable": name},
            cwd=tmp_path)
        st = PostgresStore(cfg)
        st.node = NodeSpec(id=node, lease_ms=3000, work_dirs=["/w"])
        return st
    def said(i: int, text: str) -> TranscriptEntry:
        return TranscriptEntry(id=i, role="user", contentType="text", text=text, timestamp=i)
    a, b = store(proxy.url(PG or ""), "a"), store(PG or "", "b")
    fenced: list[tuple[str | None, str]] = []
    a.on_fenced = lambda sid, why: fenced.append((sid, why))
    await a.open()
    await b.open()
    try:
        async with trio.open_nursery() as n:
            await n.start(a.monitor)
            await n.start(b.monitor)
            rec = SessionRecord(id="s1", workDir="/w", createdAt=1)
            await a.save_session(rec)
            await a.append_transcript("s1", [said(1, "before")])
            assert a.owns("s1") and [r.node for r in await b.load_sessions()] == ["a"]
            proxy.cut()  # a cannot renew its lease any more
            start = trio.current_time()
            with trio.fail_after(10):
                while not fenced:
                    await trio.sleep(0.05)
            fenced_after = trio.current_time() - start
            assert fenced[0][0] is None and "lease" in fenced[0][1]
            assert fenced_after < 3.0, "fenced before the lease (3 s) can have expired"
            assert not a.owns("s1")
            with pytest.raises(SessionFenced):
                await a.save_session(rec)
            # b claims the session once a's lease has expired on the server's clock
            with trio.fail_after(10):
                while True:
                    await b.mark_lost_nodes()
                    orphans = [r.id for r in await b.orphans()]
                    if orphans:
                        break
                    await trio.sleep(0.1)
            assert orphans == ["s1"]
            [claimed] = await b.claim(orphans)
            assert claimed.id == "s1" and b.owns("s1")
            await b.append_transcript("s1", [said(2, "on b")])
            proxy.restore()

            async def rejoined() -> bool:
                return a.health.ok
            await _wait(rejoined, 20, "a to join again")
            with pytest.raises(SessionFenced):  # never again for the session it lost
                await a.append_transcript("s1", [said(2, "late")])
            with pytest.raises(SessionFenced):
                await a.save_session(rec)
            texts = [e.text for e in await b.read_transcript("s1")]
            assert texts == ["before", "on b"]
            assert [r.node for r in await b.load_sessions()] == ["b"]
            n.cancel_scope.cancel()
    finally:
        await b.close()
        await a.close()
        await trio.to_thread.run_sync(drop_store, "postgres", name)


async def test_audit_stored_says_when_a_record_could_not_be_stored(tmp_path: Path) -> None:
    """The audit's writes fail (the store is away): the record stays queued and stored() answers False (on
    which the registry answers the operation 503 STORE_UNAVAILABLE instead of success); once the store is
    back, the same record is stored."""
    from aegisd.auth.audit import AuditLog
    from aegisd.core.errors import StoreUnavailable
    from aegisd.store import RecordLog
    from aegisd.store._memory import MemoryStore

    store = MemoryStore()
    audit = AuditLog(RecordLog(store, "audit"))
    real = store.log_append
    down = True

    async def flaky(name: str, record: Any) -> int:
        if down:
            raise StoreUnavailable("the store is away")
        return await real(name, record)

    store.log_append = flaky  # type: ignore[method-assign]
    audit.record("someone", "key.create")
    assert await audit.stored() is False and len(audit.writer.pending) == 1
    down = False
    assert await audit.stored() is True and audit.writer.pending == []
    assert [r["action"] for _, r in await RecordLog(store, "audit").read()] == ["key.create"]
