"""Fencing on the Redis store (issue 15): a daemon whose single-writer lock was taken by another daemon (or that
could not renew it for a whole TTL) stops its agents, refuses every write and writes nothing more, even in the
moment before it notices (each write is a Lua script that checks the lock's value first). Against the REAL Redis
of `. scripts/test-env.sh` (AEGIS_TEST_REDIS_URL); skipped without it. The lock is tampered with as another
daemon would: the epoch bumped and the lock set to its value."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.app.daemon import Daemon
from aegisd.core.config import load_config
from aegisd.core.errors import StoreUnavailable
from aegisd.core.models import SessionRecord, TranscriptEntry
from aegisd.core.states import State
from aegisd.store import _redis

from .conftest import DaemonHandle, agent_env, drop_store, make_config
from .test_store_faults import _start_proxy

REDIS = os.environ.get("AEGIS_TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS, reason="AEGIS_TEST_REDIS_URL not set (source scripts/test-env.sh)")

TTL_MS = 3000  # the daemons' lock TTL here: renewed every second


def _redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS or "")


def take_lock(prefix: str, *, release: bool = False) -> str:
    """What another daemon does when it takes the lock: bump the epoch, set the lock to its own value (a long TTL,
    so it stays while the test runs). ``release``: and let it go again at once."""
    with _redis_client() as r:
        epoch = r.incr(f"{prefix}:epoch")
        value = f"elsewhere:1:{epoch}-{uuid.uuid4().hex[:8]}"
        r.set(f"{prefix}:lock", value, px=600_000)
        if release:
            r.delete(f"{prefix}:lock")
    return value


def snapshot(prefix: str) -> dict[str, Any]:
    """Every key of the prefix but the lock's own, with its content."""
    out: dict[str, Any] = {}
    with _redis_client() as r:
        for key in sorted(r.scan_iter(f"{prefix}:*")):
            k = key.decode()
            if k in (f"{prefix}:lock", f"{prefix}:epoch"):
                continue
            kind = r.type(key).decode()
            if kind == "string":
                out[k] = r.get(key)
            elif kind == "hash":
                out[k] = r.hgetall(key)
            elif kind == "list":
                out[k] = r.lrange(key, 0, -1)
            else:
                out[k] = r.zrange(key, 0, -1, withscores=True)
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


async def _wait(pred: Callable[[], Any], timeout: float, what: str) -> float:
    """Wait for ``pred()`` (awaited when it returns an awaitable); how long it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            got = pred()
            if hasattr(got, "__await__"):
                got = await got
            if got:
                return trio.current_time() - start
            await trio.sleep(0.05)


# ---- the real daemon --------------------------------------------------------------------------------------------
@pytest.fixture
async def redis_daemon(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """Starts daemons on a key prefix of their own, with a lock TTL of TTL_MS. A fenced daemon may stop without
    storing everything (its last events cannot be): that error is kept in ``handle.error``, not raised."""
    monkeypatch.setattr(_redis, "LOCK_TTL_MS", TTL_MS)
    prefix = f"fence_{uuid.uuid4().hex[:10]}"
    handles: list[Any] = []

    async def start(url: str | None = None) -> Any:
        cfg = make_config(tmp_path, short_tmp, sessionStore="redis", redisUrl=url or REDIS, redisKeyPrefix=prefix)
        d = Daemon(cfg, environ=agent_env(tmp_path))
        shutdown, done = trio.Event(), trio.Event()
        errors: list[StoreUnavailable] = []

        async def runner(task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await d.run(shutdown, task_status=task_status)
            except StoreUnavailable as exc:
                errors.append(exc)
            finally:
                done.set()
        await nursery.start(runner)
        h: Any = DaemonHandle(d, shutdown)
        h.done, h.errors = done, errors
        handles.append(h)
        return h
    start.prefix = prefix  # type: ignore[attr-defined]
    yield start
    for h in handles:
        await stop(h)
    await trio.to_thread.run_sync(drop_store, "redis", prefix)


async def stop(h: Any) -> None:
    await h.http.aclose()
    h.shutdown.set()
    with trio.fail_after(20):
        await h.done.wait()


@pytest.mark.parametrize("busy", [True, False], ids=["turn-running", "idle"])
async def test_lock_taken_by_another_daemon_stops_agents_and_nothing_more_is_written(
        busy: bool, redis_daemon: Any, workdir: Path) -> None:
    """Another daemon takes the lock. Busy: a turn is writing its transcript, so the first write's guard finds the
    lock another's; idle: the renewing thread finds it (within a third of the TTL). Either way: the agents are
    gone within the bound, the daemon runs on and says degraded with the reason, writes answer 503
    STORE_UNAVAILABLE, and nothing in Redis changes after the lock was taken."""
    prefix = redis_daemon.prefix
    d = await redis_daemon()
    sids = []
    for text in ("one", "two"):
        s = await d.create(workdir, prompt=f"say:{text}", reuse=False)
        await d.wait_status(s["id"], State.IDLE, timeout=20)
        sids.append(s["id"])
    pids = [d.manager.records[sid].pid for sid in sids]
    assert all(isinstance(p, int) and alive(p) for p in pids), pids
    if busy:
        # ten seconds of transcript entries (a tool call ends the text before it)
        script = ";".join(f"say:part {i};toolauto:read:t{i}:x;sleep:100" for i in range(100))
        r = await d.http.post(f"/v1/sessions/{sids[0]}/send", json={"text": script})
        assert r.status_code == 200, r.text
        await d.wait_event(sids[0], "message", timeout=10,
                           match=lambda ev: ev.data["text"] == "part 1")

    await trio.to_thread.run_sync(take_lock, prefix)
    before = await trio.to_thread.run_sync(snapshot, prefix)  # from here on the lock is another's
    took = await _wait(lambda: not any(alive(p) for p in pids), 10, "the agents to be stopped")
    # the renewing thread looks every second (busy: the turn's next write finds it first), the monitor hands it
    # to the sessions at once, the agents are killed without a grace period: a second, and slack for a slow machine
    assert took < TTL_MS / 3000 + 3, took

    health = (await d.http.get("/v1/health")).json()
    assert health["status"] == "degraded" and health["store"] == "degraded" and health["storeKind"] == "redis"
    assert "another aegisd holds the lock" in health["storeReason"], health
    assert "another aegisd holds the lock" in (d.daemon.store.health.reason or "")
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False, "prompt": "say:x"})
    assert r.status_code == 503 and r.json()["code"] == "STORE_UNAVAILABLE", r.text
    assert int(r.headers["Retry-After"]) > 0
    r = await d.http.post("/v1/templates", json={"name": "t1", "workDir": str(workdir), "prompt": "say:x"})
    assert r.status_code == 503 and r.json()["code"] == "STORE_UNAVAILABLE", r.text
    assert not d.done.is_set()  # the daemon itself runs on

    await trio.sleep(TTL_MS / 1000)  # a few more renewing rounds, monitor probes, event flushes: still nothing
    assert await trio.to_thread.run_sync(snapshot, prefix) == before
    assert (await d.http.get("/v1/health")).status_code == 200
    await stop(d)  # within the bound (it may say it stopped without storing everything: its events cannot be)
    with _redis_client() as r:  # it let the other's lock be
        assert r.get(f"{prefix}:lock").startswith(b"elsewhere:")


async def test_redis_away_longer_than_the_lock_ttl_stops_agents_then_writes_resume(
        redis_daemon: Any, nursery: trio.Nursery, workdir: Path) -> None:
    """Redis unreachable for longer than the lock's TTL: another daemon may hold the lock now, so the agents are
    stopped (once) and writes refused; Redis back and nobody took the lock meanwhile: the daemon takes it again
    and writes go through (a new session runs); the stopped sessions resume when aegisd restarts."""
    prefix = redis_daemon.prefix
    proxy = await _start_proxy(nursery, "redis")
    try:
        d = await redis_daemon(proxy.url(REDIS or ""))
        s = await d.create(workdir, prompt="say:one", reuse=False)
        sid = s["id"]
        await d.wait_status(sid, State.IDLE, timeout=20)
        pid = d.manager.records[sid].pid
        assert pid and alive(pid)
        fenced: list[tuple[str | None, str]] = []
        tell = d.daemon.store.on_fenced
        assert tell is not None

        def spy(session_id: str | None, reason: str) -> None:
            fenced.append((session_id, reason))
            tell(session_id, reason)
        d.daemon.store.on_fenced = spy
        proxy.cut()
        # a TTL without renewal, then at most a renewing round (1 s) plus a failing call
        await _wait(lambda: not alive(pid), TTL_MS / 1000 + 8, "the agent to be stopped")
        assert len(fenced) == 1 and fenced[0][0] is None and "could not be renewed" in fenced[0][1], fenced
        assert "could not be renewed" in (d.daemon.store.health.reason or "")
        r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
        assert r.status_code == 503 and r.json()["code"] == "STORE_UNAVAILABLE", r.text

        proxy.restore()
        await _wait(lambda: d.daemon.store.health.ok, 20, "the lock to be taken again")
        s2 = await d.create(workdir, prompt="say:after", reuse=False)
        await d.wait_status(s2["id"], State.IDLE, timeout=20)
        assert len(fenced) == 1  # once per loss
        with _redis_client() as r:
            assert r.get(f"{prefix}:lock") == d.daemon.store._token.encode()  # type: ignore[attr-defined]
        await stop(d)
        assert d.errors == []  # the lock back, everything was stored
        d2 = await redis_daemon()
        await d2.wait_status(sid, State.IDLE, timeout=20)  # the stopped session resumes on a restart
        assert d2.manager.runners.get(sid) is not None
    finally:
        proxy.restore()


# ---- the store alone ----------------------------------------------------------------------------------------------
@pytest.fixture
async def store_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    prefix = f"fence_{uuid.uuid4().hex[:10]}"
    opened: list[Any] = []

    def make(ttl_ms: int, url: str | None = None) -> Any:
        cfg = load_config(env={}, config_path=None, cwd=tmp_path, overrides={
            "stateDir": str(tmp_path / "state"), "sessionStore": "redis", "redisUrl": url or REDIS,
            "redisKeyPrefix": prefix})
        st = _redis.RedisStore(cfg, lock_ttl_ms=ttl_ms)
        st.told = []  # type: ignore[attr-defined]
        st.on_fenced = lambda sid, reason: st.told.append((sid, reason))  # type: ignore[attr-defined]
        opened.append(st)
        return st
    make.prefix = prefix  # type: ignore[attr-defined]
    yield make
    for st in opened:
        await st.close()
    await trio.to_thread.run_sync(drop_store, "redis", prefix)


def _rec(sid: str) -> SessionRecord:
    return SessionRecord(id=sid, workDir="/w", status=State.IDLE, createdAt=1)


async def test_a_write_in_the_window_before_the_daemon_notices_is_refused(store_factory: Any) -> None:
    """The renewing thread would not look for a minute: every kind of write still finds the lock another's in its
    own script and writes nothing; the first refusal fences the store (on_fenced told once) and every call after
    is refused at once."""
    st = store_factory(60_000)
    await st.open()
    entry = TranscriptEntry(id=1, role="user", contentType="text", text="a", timestamp=1)
    await st.doc_put("c", "k", {"v": 1})
    await st.save_session(_rec("s1"))
    await st.append_transcript("s1", [entry])
    assert await st.log_append("audit", {"n": 1}) == 1
    prefix = store_factory.prefix
    await trio.to_thread.run_sync(take_lock, prefix)
    before = await trio.to_thread.run_sync(snapshot, prefix)
    with pytest.raises(StoreUnavailable, match="another aegisd holds the lock"):
        await st.doc_put("c", "k", {"v": 2})
    assert st.told == [(None, st.health.reason)] and "another aegisd holds the lock" in st.health.reason
    assert not st.health.ok
    writes = [lambda: st.doc_delete("c", "k"), lambda: st.save_session(_rec("s2")),
              lambda: st.append_transcript("s1", [TranscriptEntry(id=2, role="user", contentType="text", text="b",
                                                                  timestamp=1)]),
              lambda: st.log_append("audit", {"n": 2}), lambda: st.log_trim("audit", 5),
              lambda: st.delete_session("s1")]
    for write in writes:
        with pytest.raises(StoreUnavailable):
            await write()
    assert await trio.to_thread.run_sync(snapshot, prefix) == before
    assert len(st.told) == 1  # once per loss


async def test_each_write_kind_is_refused_by_its_own_guard(store_factory: Any) -> None:
    """Not only the first write: each write's script checks the lock (the store's own refusal bypassed)."""
    st = store_factory(60_000)
    await st.open()
    await st.save_session(_rec("s1"))
    prefix = store_factory.prefix
    await trio.to_thread.run_sync(take_lock, prefix)
    before = await trio.to_thread.run_sync(snapshot, prefix)
    from aegisd.core.models import Event

    writes: list[Callable[[Any], Any]] = [
        lambda c: st._write(c, ("HSET", f"{prefix}:d:c", "k", b"{}")),
        lambda c: st._scripts["append"](keys=[f"{prefix}:lock", f"{prefix}:ls:x", f"{prefix}:l:x"],
                                        args=[st._token, b"{}"], client=c),
        lambda c: st._scripts["append_once"](keys=[f"{prefix}:lock", f"{prefix}:t:s1"], args=[st._token, 1, b"{}"],
                                             client=c),
    ]
    import redis

    for write in writes:
        with pytest.raises(redis.ResponseError, match=_redis._FENCED):
            await trio.to_thread.run_sync(write, st._client)
    st._fenced = None  # as if it had not noticed: the events' and the session's writes go to Redis, and are refused
    with pytest.raises(StoreUnavailable):
        await st.append_events([Event(id=1, event="x", sessionId="s1", timestamp=0)])
    st._fenced = None
    with pytest.raises(StoreUnavailable):
        await st.delete_session("s1")
    assert await trio.to_thread.run_sync(snapshot, prefix) == before


async def test_a_lock_deleted_with_nobody_taking_it_is_taken_again_without_fencing(store_factory: Any) -> None:
    """The key vanished (deleted, evicted) and no other daemon took it (the epoch is still this daemon's): the next
    write takes it again in place and goes through; the agents are not stopped."""
    st = store_factory(60_000)
    await st.open()
    prefix = store_factory.prefix
    with _redis_client() as r:
        r.delete(f"{prefix}:lock")
    await st.doc_put("c", "k", {"v": 1})
    assert await st.doc_get("c", "k") == {"v": 1}
    assert st.told == [] and st.health.ok
    with _redis_client() as r:
        assert r.get(f"{prefix}:lock") == st._token.encode() and r.pttl(f"{prefix}:lock") > 50_000


async def test_a_lock_another_daemon_held_meanwhile_is_not_taken_again(store_factory: Any, nursery: trio.Nursery,
                                                                        ) -> None:
    """Another daemon took the lock and let it go again: this daemon's view of the keys may be stale, so it does not
    take the lock again (it stays fenced, the reason says to restart it); a new daemon opens at once."""
    st = store_factory(1500)
    await st.open()
    await nursery.start(st.monitor)
    prefix = store_factory.prefix
    await trio.to_thread.run_sync(lambda: take_lock(prefix, release=True))
    await _wait(lambda: "held by another aegisd meanwhile" in (st.health.reason or ""), 5, "the loss to be seen")
    assert len(st.told) == 1 and "restart it" in st.told[0][1]
    await trio.sleep(1.5)  # three renewing rounds: still not taken again
    with _redis_client() as r:
        assert r.get(f"{prefix}:lock") is None
    with pytest.raises(StoreUnavailable):
        await st.doc_put("c", "k", {"v": 1})
    other = store_factory(1500)
    with trio.fail_after(2):
        await other.open()
    await other.doc_put("c", "k", {"v": "other"})
    assert await other.doc_get("c", "k") == {"v": "other"} and len(st.told) == 1


async def test_the_lock_value_carries_the_epoch(store_factory: Any) -> None:
    """Each daemon that takes the lock bumps the epoch, and its lock value (and so every write's check) carries it."""
    prefix = store_factory.prefix
    a = store_factory(60_000)
    await a.open()
    await a.close()
    b = store_factory(60_000)
    await b.open()
    with _redis_client() as r:
        assert int(r.get(f"{prefix}:epoch")) == 2
        host, pid, rest = r.get(f"{prefix}:lock").decode().rsplit(":", 2)
    assert int(pid) == os.getpid() and rest.split("-")[0] == "2" and b._epoch == "2"
