"""The Redis store (`AEGIS_SESSION_STORE=redis`).

redis.asyncio does not run under trio, so the sync client (thread-safe, with its own connection pool) runs in
worker threads. Keys, under ``<prefix>:``: ``meta`` (hash: schema_version, last_event_id), ``sessions`` (hash:
id → JSON record), ``t:<id>`` (list: transcript entries), ``e:<id>`` (sorted set by event id: the session's
last EVENT_RING events), ``e`` (sorted set: the last GLOBAL_RING events of all sessions), ``d:<collection>``
(hash: key → JSON document), ``l:<log>`` (sorted set of "<seq> <JSON>" scored by seq), ``ls:<log>`` (the log's
last seq), ``lock``.
Multi-key writes go in one MULTI/EXEC transaction. A call returns once Redis acknowledged it; what survives a
Redis restart is what its persistence settings keep (use ``appendonly yes``; see docs/stores.md).

One daemon per prefix: ``lock`` (``host:pid:random``) is taken with SET NX and a TTL that a thread renews every
third of it. A daemon on the same host tells a live holder (refused at once) from a dead one, e.g. SIGKILLed
(taken over at once); a holder on another host is waited for up to one TTL, so its lock expires if it died."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
import trio

from aegisd.core.errors import StoreUnavailable, Unavailable
from aegisd.core.models import SCHEMA_VERSION, Event, SessionRecord, TranscriptEntry
from aegisd.store._file import EVENT_RING
from aegisd.store._health import StoreHealth
from aegisd.store._postgres import mask_url

if TYPE_CHECKING:
    from aegisd.core.config import Config

log = structlog.get_logger("aegisd.store.redis")

T = TypeVar("T")
GLOBAL_RING = 10 * EVENT_RING
LOCK_TTL_MS = 15_000
SOCKET_TIMEOUT_S = 5  # a call Redis does not answer (paused, network cut) fails after this, and is retried
WATCH_INTERVAL_S = 1.0  # how often the monitor probes a degraded store
_enc = msgspec.json.Encoder()
_rec_dec = msgspec.json.Decoder(SessionRecord)
_entry_dec = msgspec.json.Decoder(TranscriptEntry)
_event_dec = msgspec.json.Decoder(Event)

# delete the lock only if it is still ours
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# extend the lock only if it is still ours
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
          "else return 0 end")


# replace a dead holder's lock, only if it is still that holder's
_TAKEOVER = ("if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
             "return 1 else return 0 end")


# append one record to a log: the next sequence number, and the record scored by it (member "<seq> <json>")
_APPEND = ("local s = redis.call('incr', KEYS[1]) redis.call('zadd', KEYS[2], s, s .. ' ' .. ARGV[1]) "
           "return s")


def _holder_verdict(holder: bytes | None) -> str:
    """'alive' or 'dead' for a lock held by a daemon of this host (known by its pid), else 'unknown'."""
    if not holder:
        return "unknown"
    try:
        host, pid_s, _ = holder.decode().rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return "unknown"
    if host != socket.gethostname():
        return "unknown"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return "dead"
    return "alive" if b"aegisd" in cmdline or pid == os.getpid() else "dead"


# RPUSH the entries ARGV[2..] unless the list's last entry already has an id >= ARGV[1] (they were pushed)
_APPEND_ONCE = """
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local ok, entry = pcall(cjson.decode, last)
  if ok and type(entry) == 'table' and tonumber(entry['id']) and tonumber(entry['id']) >= tonumber(ARGV[1]) then
    return 0
  end
end
return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
"""


class RedisStore:
    on_fenced: Callable[[str | None, str], None] | None = None
    assigns_event_ids = False
    name = "redis"

    def __init__(self, config: Config, *, lock_ttl_ms: int = LOCK_TTL_MS) -> None:
        self.url = config.redisUrl
        self.prefix = config.redisKeyPrefix or "aegis"
        self.lock_ttl_ms = lock_ttl_ms
        self._client: Any = None  # redis.Redis (bytes responses); typed loosely: its stubs say bytes | str
        self._limiter = trio.CapacityLimiter(8)
        # host:pid:random, so a daemon on the same host can tell a dead holder (SIGKILLed) from a live one
        self._token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self.lock_lost = False
        self._last_event_id = 0
        self.health = StoreHealth("redis")
        self._data_error: str | None = None  # why the last call failed (None: it worked)
        self._fenced: str | None = None  # why writes are refused: the single-writer lock is another's

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _call(self, fn: Callable[[Any], T]) -> T:  # in a worker thread
        import redis as redis_mod

        client = self._client
        if client is None:
            raise StoreUnavailable("the Redis store is closed")
        if self._fenced is not None:
            raise StoreUnavailable(f"Redis at {mask_url(self.url)}: {self._fenced}")
        try:
            result = fn(client)
        except (redis_mod.ConnectionError, redis_mod.TimeoutError) as exc:
            # the client's pool drops the broken connection and connects anew on the next call
            self._data_error = f"Redis at {mask_url(self.url)}: {exc}"
            raise StoreUnavailable(self._data_error) from None
        self._data_error = None
        return result

    def _refresh_health(self) -> None:
        reason = self._fenced or self._data_error
        if reason is None:
            self.health.up()
        else:
            self.health.down(reason)
        self.health.sync()

    async def _run(self, fn: Callable[[Any], T]) -> T:
        assert self._client is not None, "store not open"
        try:
            # the call runs to its end whatever cancels the caller, unless the daemon gives up on the store
            with trio.CancelScope(shield=True), self.health.bounded():
                result = await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter,
                                                       abandon_on_cancel=True)
        finally:
            self._refresh_health()
        return result

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """PING the store every WATCH_INTERVAL_S, so that an outage shows (and operations answer 503 at once)
        before a write runs into it, and health turns ok again without waiting for one; the lock is watched by
        its renewing thread."""
        task_status.started()
        while True:
            await trio.sleep(WATCH_INTERVAL_S)
            if self._client is not None:
                try:
                    with self.health.bounded():
                        await trio.to_thread.run_sync(self._probe, abandon_on_cancel=True)
                except StoreUnavailable:
                    if self.health.given_up is not None:
                        return
            self._refresh_health()

    def _probe(self) -> None:
        try:
            self._call(lambda c: c.ping())
        except StoreUnavailable:
            pass

    # ---- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        import redis as redis_mod

        client: Any = redis_mod.Redis.from_url(self.url, socket_connect_timeout=SOCKET_TIMEOUT_S,
                                               socket_timeout=SOCKET_TIMEOUT_S,
                                               health_check_interval=30)
        try:
            client.ping()
        except redis_mod.RedisError as exc:
            client.close()
            raise Unavailable(f"cannot connect to Redis at {mask_url(self.url)}: {exc}") from None
        deadline = time.monotonic() + self.lock_ttl_ms / 1000 + 1
        while not client.set(self._k("lock"), self._token, nx=True, px=self.lock_ttl_ms):
            holder = client.get(self._k("lock"))
            verdict = _holder_verdict(holder)
            if verdict == "dead" and client.eval(_TAKEOVER, 1, self._k("lock"), holder, self._token,
                                                 self.lock_ttl_ms):
                log.info("store.lock_taken_over", holder=holder.decode(errors="replace"))
                break
            if verdict == "alive" or time.monotonic() > deadline:
                client.close()
                raise Unavailable(f"another aegisd uses the Redis key prefix {self.prefix!r} at {mask_url(self.url)}"
                                  f" (lock held by {(holder or b'?').decode(errors='replace').rsplit(':', 1)[0]})")
            time.sleep(0.2)  # another machine's daemon: if it died, its lock expires within one TTL
        meta = {k.decode(): int(v) for k, v in client.hgetall(self._k("meta")).items()}
        version = meta.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            client.eval(_RELEASE, 1, self._k("lock"), self._token)
            client.close()
            raise Unavailable(f"the Redis keys {self.prefix}:* hold schema version {version}; this aegisd reads up "
                              f"to {SCHEMA_VERSION} (upgrade aegisd)")
        client.hset(self._k("meta"), "schema_version", SCHEMA_VERSION)
        self._last_event_id = meta.get("last_event_id", 0)
        self._client = client
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="aegisd-redis-lock", daemon=True)
        self._renewer.start()
        log.info("store.opened", store="redis", url=mask_url(self.url), prefix=self.prefix)

    def _renew_loop(self) -> None:
        """Renew the lock every third of its TTL. Redis away: try again next round (once a TTL passed without a
        renewal, writes are refused: the lock may have expired). The lock gone when Redis is back (it expired, or
        Redis restarted without it): take it again; held by another daemon meanwhile: refuse every write rather
        than write concurrently."""
        import redis as redis_mod

        assert self._client is not None
        last_ok = time.monotonic()
        while not self._stop.wait(self.lock_ttl_ms / 3000):
            client = self._client
            if client is None:
                return
            try:
                ok = client.eval(_RENEW, 1, self._k("lock"), self._token, self.lock_ttl_ms)
                if not ok:  # not ours any more: take it again if nobody holds it
                    ok = client.set(self._k("lock"), self._token, nx=True, px=self.lock_ttl_ms)
                    if ok:
                        log.warning("store.lock_retaken", store="redis", prefix=self.prefix)
            except redis_mod.RedisError as exc:  # Redis away for a moment: try again next round
                log.warning("store.lock_renew_failed", error=str(exc))
                if time.monotonic() - last_ok > self.lock_ttl_ms / 1000 and self._fenced is None:
                    self._fenced = "the single-writer lock could not be renewed for a whole TTL: writes wait for it"
                continue
            except Exception as exc:  # noqa: BLE001 - never end the renewing thread
                log.warning("store.lock_renew_failed", error=str(exc))
                continue
            if ok:
                last_ok = time.monotonic()
                if self._fenced is not None:
                    self._fenced = None
                    self.lock_lost = False
                continue
            if not self.lock_lost:
                log.error("store.lock_lost", prefix=self.prefix,
                          hint="another aegisd took the lock of the same keys: this daemon refuses every write "
                               "rather than write concurrently; stop one of them")
            self.lock_lost = True
            self._fenced = f"another aegisd holds the lock of the Redis key prefix {self.prefix!r}: writes refused"

    async def close(self) -> None:
        def shut() -> None:
            self._stop.set()
            if self._renewer is not None:
                self._renewer.join(timeout=5)
                self._renewer = None
            if self._client is not None:
                try:
                    self._client.eval(_RELEASE, 1, self._k("lock"), self._token)
                except Exception as exc:  # noqa: BLE001 - the lock then expires on its own
                    log.warning("store.lock_release_failed", error=str(exc))
                self._client.close()
                self._client = None
        await trio.to_thread.run_sync(shut, abandon_on_cancel=True)  # the daemon bounds how long it waits

    async def flush(self) -> None:
        pass  # every call has been acknowledged by Redis when it returned

    # ---- sessions ------------------------------------------------------------------------------
    async def load_sessions(self) -> list[SessionRecord]:
        raw = await self._run(lambda c: c.hgetall(self._k("sessions")))
        out = []
        for sid, body in raw.items():
            try:
                rec = _rec_dec.decode(body)
            except msgspec.DecodeError as exc:
                log.warning("store.bad_record_skipped", session_id=sid.decode(errors="replace"), error=str(exc))
                continue
            if rec.schemaVersion > SCHEMA_VERSION:
                log.warning("store.newer_schema_skipped", session_id=rec.id, version=rec.schemaVersion)
                continue
            out.append(rec)
        out.sort(key=lambda r: (r.createdAt, r.id))
        return out

    async def save_session(self, record: SessionRecord) -> None:
        body = _enc.encode(record)
        await self._run(lambda c: c.hset(self._k("sessions"), record.id, body))

    async def delete_session(self, session_id: str) -> None:
        def q(c: Any) -> None:
            ids = c.zrange(self._k("e", session_id), 0, -1)
            with c.pipeline(transaction=True) as p:
                p.hdel(self._k("sessions"), session_id)
                p.delete(self._k("t", session_id), self._k("e", session_id))
                for member in ids:
                    p.zrem(self._k("e"), member)
                p.execute()
        await self._run(q)

    # ---- transcripts ---------------------------------------------------------------------------
    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None:
        if entries:
            lines = [_enc.encode(e) for e in entries]
            key, first = self._k("t", session_id), entries[0].id
            # idempotent: a retry of an append whose answer was lost (the connection cut after the server ran it)
            # finds its entries already there and pushes nothing, so no entry (and no id) is stored twice
            await self._run(lambda c: c.eval(_APPEND_ONCE, 1, key, first, *lines))

    async def read_transcript(self, session_id: str, start: int = 0,
                              limit: int | None = None) -> list[TranscriptEntry]:
        end = -1 if limit is None else start + limit - 1
        if limit == 0:
            return []
        raw = await self._run(lambda c: c.lrange(self._k("t", session_id), start, end))
        return [_entry_dec.decode(b) for b in raw]

    async def transcript_count(self, session_id: str) -> int:
        return int(await self._run(lambda c: c.llen(self._k("t", session_id))))

    # ---- events --------------------------------------------------------------------------------
    async def append_events(self, events: list[Event]) -> None:
        if not events:
            return
        top = max(self._last_event_id, max(ev.id for ev in events))
        self._last_event_id = top
        by_session: dict[str, dict[bytes, int]] = {}
        every: dict[bytes, int] = {}
        for ev in events:
            body = _enc.encode(ev)
            by_session.setdefault(ev.sessionId, {})[body] = ev.id
            every[body] = ev.id

        def q(c: Any) -> None:
            with c.pipeline(transaction=True) as p:
                for sid, members in by_session.items():
                    p.zadd(self._k("e", sid), members)
                    p.zremrangebyrank(self._k("e", sid), 0, -EVENT_RING - 1)
                p.zadd(self._k("e"), every)
                p.zremrangebyrank(self._k("e"), 0, -GLOBAL_RING - 1)
                p.hset(self._k("meta"), "last_event_id", top)
                p.execute()
        await self._run(q)

    async def read_events(self, *, session_id: str | None, after_id: int, limit: int = 1000) -> list[Event]:
        key = self._k("e") if session_id is None else self._k("e", session_id)
        raw = await self._run(lambda c: c.zrangebyscore(key, f"({after_id}", "+inf", start=0, num=limit))
        return [_event_dec.decode(b) for b in raw]

    async def last_event_id(self) -> int:
        return self._last_event_id

    # ---- documents -----------------------------------------------------------------------------
    async def doc_get(self, collection: str, key: str) -> Any | None:
        raw = await self._run(lambda c: c.hget(self._k("d", collection), key))
        return None if raw is None else msgspec.json.decode(raw)

    async def doc_put(self, collection: str, key: str, doc: Any) -> None:
        body = _enc.encode(doc)
        await self._run(lambda c: c.hset(self._k("d", collection), key, body))

    async def doc_delete(self, collection: str, key: str) -> None:
        await self._run(lambda c: c.hdel(self._k("d", collection), key))

    async def doc_list(self, collection: str) -> dict[str, Any]:
        raw = await self._run(lambda c: c.hgetall(self._k("d", collection)))
        return {k.decode(): msgspec.json.decode(v) for k, v in sorted(raw.items())}

    # ---- append-only logs ----------------------------------------------------------------------
    async def log_append(self, log: str, record: Any) -> int:
        body = _enc.encode(record)
        return int(await self._run(lambda c: c.eval(_APPEND, 2, self._k("ls", log), self._k("l", log), body)))

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        if limit == 0:
            return []
        raw = await self._run(lambda c: c.zrangebyscore(self._k("l", log), f"({after}", "+inf",
                                                        start=0 if limit is not None else None, num=limit))
        out = []
        for member in raw:
            seq, _, body = member.partition(b" ")
            out.append((int(seq), msgspec.json.decode(body)))
        return out

    async def log_trim(self, log: str, before: int) -> None:
        await self._run(lambda c: c.zremrangebyscore(self._k("l", log), "-inf", f"({before}"))
