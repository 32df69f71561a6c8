"""The Redis store (`AEGIS_SESSION_STORE=redis`).

redis.asyncio does not run under trio, so the sync client (thread-safe, with its own connection pool) runs in
worker threads. Keys, under ``<prefix>:``: ``meta`` (hash: schema_version, last_event_id), ``sessions`` (hash:
id → JSON record), ``t:<id>`` (list: transcript entries), ``e:<id>`` (sorted set by event id: the session's
last EVENT_RING events), ``e`` (sorted set: the last GLOBAL_RING events of all sessions), ``d:<collection>``
(hash: key → JSON document), ``l:<log>`` (sorted set of "<seq> <JSON>" scored by seq), ``ls:<log>`` (the log's
last seq), ``lock``, ``epoch``.
A call returns once Redis acknowledged it; what survives a Redis restart is what its persistence settings keep
(use ``appendonly yes``; see docs/stores.md).

One daemon per prefix: ``lock`` (``host:pid:<epoch>-<random>``) is taken with a TTL that a thread renews every
third of it; each taking bumps ``epoch``. A daemon on the same host tells a live holder (refused at once) from a
dead one, e.g. SIGKILLed (taken over at once); a holder on another host is waited for up to one TTL, so its lock
expires if it died.

Fencing: every write is one Lua script that first checks that ``lock`` still holds this daemon's value, so a
daemon that lost the lock writes nothing, even before it notices. When it notices (the renewing thread, or a
write refused by that check) it refuses every call, tells ``on_fenced`` (its agents stop) and shows degraded.
It takes the lock again only if the key is free and ``epoch`` is still its own (nobody held it meanwhile)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
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

# take the lock (KEYS[1]) if it is free, or still held by ARGV[3] (a dead holder; "" for none): bump the epoch
# (KEYS[2]) and set the lock to ARGV[1] .. epoch .. '-' .. ARGV[2]; the value set, or nil if it is another's
_ACQUIRE = """
local cur = redis.call('get', KEYS[1])
if cur and cur ~= ARGV[3] then return false end
local e = redis.call('incr', KEYS[2])
local v = ARGV[1] .. e .. '-' .. ARGV[2]
redis.call('set', KEYS[1], v, 'PX', ARGV[4])
return v
"""

# keep the lock: 1 renewed (still ours); 2 taken again (it was free and the epoch still ours: nobody held it
# meanwhile); 0 another holds it; -1 free but the epoch moved on (another daemon held it meanwhile, or Redis
# lost its data): this daemon's view of the keys may be stale, it must not take the lock again
_KEEP = """
local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[3]) return 1 end
if cur then return 0 end
if redis.call('get', KEYS[2]) ~= ARGV[2] then return -1 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 2
"""

_FENCED = "AEGIS_FENCED"
# the guard every write starts with: nothing is written unless the lock (KEYS[1]) holds this daemon's ARGV[1]
_GUARD = f"if redis.call('get', KEYS[1]) ~= ARGV[1] then return redis.error_reply('{_FENCED} lock not held') end\n"

# the commands ARGV[2..], each as <argument count> <command> <arguments...>, run if the lock is ours
_GUARDED = _GUARD + """
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""

# append one record to a log: the next sequence number, and the record scored by it (member "<seq> <json>")
_APPEND = _GUARD + ("local s = redis.call('incr', KEYS[2]) redis.call('zadd', KEYS[3], s, s .. ' ' .. ARGV[2]) "
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


# RPUSH the entries ARGV[3..] to KEYS[2] unless its last entry already has an id >= ARGV[2] (they were pushed)
_APPEND_ONCE = _GUARD + """
local last = redis.call('LINDEX', KEYS[2], -1)
if last then
  local ok, entry = pcall(cjson.decode, last)
  if ok and type(entry) == 'table' and tonumber(entry['id']) and tonumber(entry['id']) >= tonumber(ARGV[2]) then
    return 0
  end
end
return redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
"""
_ZADD_CHUNK = 1000  # members per ZADD in a guarded script (Lua's unpack takes a few thousand values at most)


class RedisStore:
    on_fenced: Callable[[str | None, str], None] | None = None
    assigns_event_ids = False
    name = "redis"

    def __init__(self, config: Config, *, lock_ttl_ms: int | None = None) -> None:
        self.url = config.redisUrl
        self.prefix = config.redisKeyPrefix or "aegis"
        self.lock_ttl_ms = lock_ttl_ms or LOCK_TTL_MS
        self._client: Any = None  # redis.Redis (bytes responses); typed loosely: its stubs say bytes | str
        self._scripts: dict[str, Any] = {}  # redis Script objects (EVALSHA, loaded again after a Redis restart)
        self._limiter = trio.CapacityLimiter(8)
        # the lock's value while this daemon holds it: host:pid:<epoch>-<random>, so a daemon on the same host can
        # tell a dead holder (SIGKILLed) from a live one; every write checks it (fencing)
        self._token = ""
        self._epoch = ""  # the value of ``epoch`` when this daemon took the lock
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock_mx = threading.Lock()  # one change of the lock's state at a time (renewing thread, a refused write)
        self._losses = 0  # how many times the lock was lost (by the threads) ...
        self._told = 0  # ... and how many of them on_fenced was told of (in the trio thread)
        self._loss_reason = ""
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()  # set (through the trio token) when the lock is lost: the monitor tells on_fenced
        self._last_event_id = 0
        self.health = StoreHealth("redis")
        self._data_error: str | None = None  # why the last call failed (None: it worked)
        self._fenced: str | None = None  # why every call is refused: the single-writer lock is not held

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _call(self, fn: Callable[[Any], T]) -> T:  # in a worker thread
        import redis as redis_mod

        client = self._client
        if client is None:
            raise StoreUnavailable("the Redis store is closed")
        for _ in range(2):
            if self._fenced is not None:
                raise StoreUnavailable(f"Redis at {mask_url(self.url)}: {self._fenced}")
            try:
                result = fn(client)
            except (redis_mod.ConnectionError, redis_mod.TimeoutError) as exc:
                # the client's pool drops the broken connection and connects anew on the next call
                self._data_error = f"Redis at {mask_url(self.url)}: {exc}"
                raise StoreUnavailable(self._data_error) from None
            except redis_mod.ResponseError as exc:
                if not str(exc).startswith(_FENCED):
                    raise
                # the write's guard found the lock not ours: whose is it? (taken again if it was free and nobody
                # held it meanwhile, and the write tried once more; else this daemon is fenced)
                try:
                    self._keep_lock(client)
                except redis_mod.RedisError as exc2:
                    self._data_error = f"Redis at {mask_url(self.url)}: {exc2}"
                    raise StoreUnavailable(self._data_error) from None
                continue
            self._data_error = None
            return result
        raise StoreUnavailable(f"Redis at {mask_url(self.url)}: the single-writer lock is not this daemon's")

    def _write(self, c: Any, *commands: Sequence[Any]) -> None:
        """Run ``commands`` (each a Redis command and its arguments) in one Lua script, atomically, and only if the
        lock still holds this daemon's value (else the script refuses, and writes nothing)."""
        args: list[Any] = [self._token]
        for cmd in commands:
            args.append(len(cmd))
            args.extend(cmd)
        self._scripts["guarded"](keys=[self._k("lock")], args=args, client=c)

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
            self._tell_fenced()
        return result

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """PING the store every WATCH_INTERVAL_S, so that an outage shows (and operations answer 503 at once)
        before a write runs into it, and health turns ok again without waiting for one; the lock is watched by
        its renewing thread, which wakes this task when it is lost (to tell on_fenced)."""
        task_status.started()
        while True:
            self._tell_fenced()
            with trio.move_on_after(WATCH_INTERVAL_S):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()
                continue
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

    # ---- the single-writer lock, and fencing ----------------------------------------------------
    def _keep_lock(self, client: Any) -> bool:  # in a worker thread
        """Renew the lock, or take it again if it is free and nobody held it since this daemon took it; else this
        daemon is fenced. Whether it holds the lock now (a RedisError when Redis does not answer)."""
        with self._lock_mx:
            kept = int(self._scripts["keep"](keys=[self._k("lock"), self._k("epoch")],
                                             args=[self._token, self._epoch, self.lock_ttl_ms], client=client))
            if kept > 0:
                if self._fenced is not None:
                    self._fenced = None
                    log.warning("store.lock_regained", store="redis", prefix=self.prefix,
                                hint="writes go through again; the sessions stopped when the lock was lost resume "
                                     "when aegisd restarts")
                elif kept == 2:  # the key was gone (deleted, evicted, Redis restarted without it), nobody took it
                    log.warning("store.lock_retaken", store="redis", prefix=self.prefix)
                return True
            if kept == 0:
                self._lose(f"another aegisd holds the lock of the Redis key prefix {self.prefix!r}: this daemon "
                           "stopped its agents and refuses every write")
            else:
                self._lose(f"the lock of the Redis key prefix {self.prefix!r} was held by another aegisd meanwhile "
                           "(or Redis lost its data): this daemon stopped its agents and refuses every write; "
                           "restart it")
            return False

    def _lose(self, reason: str, *, replace: bool = True) -> None:  # with _lock_mx held
        """The lock is lost (or may be): refuse every call, and have on_fenced told once (in the trio thread)."""
        if self._fenced is not None:
            if replace:
                self._fenced = reason
            return
        self._fenced = self._loss_reason = reason
        self._losses += 1
        log.error("store.lock_lost", store="redis", prefix=self.prefix, reason=reason)
        token = self._trio_token
        if token is not None:
            try:
                token.run_sync_soon(lambda: self._wake.set())  # the monitor tells on_fenced, at once
            except trio.RunFinishedError:
                pass

    def _tell_fenced(self) -> None:  # in a trio task: the monitor, or a call that met the loss
        if self._told == self._losses:
            return
        self._told = self._losses
        self._refresh_health()
        if self.on_fenced is not None:
            self.on_fenced(None, self._loss_reason)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        self._trio_token = trio.lowlevel.current_trio_token()
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
        scripts = {name: client.register_script(src) for name, src in (
            ("acquire", _ACQUIRE), ("keep", _KEEP), ("guarded", _GUARDED), ("append", _APPEND),
            ("append_once", _APPEND_ONCE))}
        keys = [self._k("lock"), self._k("epoch")]
        mine = (f"{socket.gethostname()}:{os.getpid()}:", secrets.token_hex(8))
        deadline = time.monotonic() + self.lock_ttl_ms / 1000 + 1
        while not (value := scripts["acquire"](keys=keys, args=[*mine, "", self.lock_ttl_ms], client=client)):
            holder = client.get(self._k("lock"))
            verdict = _holder_verdict(holder)
            if verdict == "dead" and (value := scripts["acquire"](keys=keys, args=[*mine, holder, self.lock_ttl_ms],
                                                                  client=client)):
                log.info("store.lock_taken_over", holder=holder.decode(errors="replace"))
                break
            if verdict == "alive" or time.monotonic() > deadline:
                client.close()
                raise Unavailable(f"another aegisd uses the Redis key prefix {self.prefix!r} at {mask_url(self.url)}"
                                  f" (lock held by {(holder or b'?').decode(errors='replace').rsplit(':', 1)[0]})")
            time.sleep(0.2)  # another machine's daemon: if it died, its lock expires within one TTL
        self._token = value.decode()
        self._epoch = self._token.rsplit(":", 1)[1].split("-", 1)[0]
        self._scripts = scripts
        meta = {k.decode(): int(v) for k, v in client.hgetall(self._k("meta")).items()}
        version = meta.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            client.eval(_RELEASE, 1, self._k("lock"), self._token)
            client.close()
            raise Unavailable(f"the Redis keys {self.prefix}:* hold schema version {version}; this aegisd reads up "
                              f"to {SCHEMA_VERSION} (upgrade aegisd)")
        self._write(client, ("HSET", self._k("meta"), "schema_version", SCHEMA_VERSION))
        self._last_event_id = meta.get("last_event_id", 0)
        self._client = client
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="aegisd-redis-lock", daemon=True)
        self._renewer.start()
        log.info("store.opened", store="redis", url=mask_url(self.url), prefix=self.prefix, epoch=self._epoch)

    def _renew_loop(self) -> None:
        """Keep the lock every third of its TTL (_keep_lock). Redis away: try again next round; once a TTL passed
        since the last renewal began, the lock may have expired and another daemon may hold it: fenced (the agents
        stop, every call is refused) until the lock is this daemon's again."""
        import redis as redis_mod

        assert self._client is not None
        last_ok = time.monotonic()
        while not self._stop.wait(self.lock_ttl_ms / 3000):
            client = self._client
            if client is None:
                return
            started = time.monotonic()
            try:
                if self._keep_lock(client):
                    last_ok = started  # Redis set the TTL after this: the lock holds until last_ok + TTL at least
            except redis_mod.RedisError as exc:  # Redis away for a moment: try again next round
                log.warning("store.lock_renew_failed", error=str(exc))
                if time.monotonic() - last_ok > self.lock_ttl_ms / 1000:
                    with self._lock_mx:
                        self._lose("the single-writer lock could not be renewed for a whole TTL (another aegisd "
                                   "may hold it now): this daemon stopped its agents and refuses every write until "
                                   "it has the lock again", replace=False)
            except Exception as exc:  # noqa: BLE001 - never end the renewing thread
                log.warning("store.lock_renew_failed", error=str(exc))

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
        await self._run(lambda c: self._write(c, ("HSET", self._k("sessions"), record.id, body)))

    async def delete_session(self, session_id: str) -> None:
        def q(c: Any) -> None:
            ids = c.zrange(self._k("e", session_id), 0, -1)
            self._write(c, ("HDEL", self._k("sessions"), session_id),
                        ("DEL", self._k("t", session_id), self._k("e", session_id)),
                        *(("ZREM", self._k("e"), *ids[i:i + _ZADD_CHUNK]) for i in range(0, len(ids), _ZADD_CHUNK)))
        await self._run(q)

    # ---- transcripts ---------------------------------------------------------------------------
    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None:
        if entries:
            lines = [_enc.encode(e) for e in entries]
            key, first = self._k("t", session_id), entries[0].id
            # idempotent: a retry of an append whose answer was lost (the connection cut after the server ran it)
            # finds its entries already there and pushes nothing, so no entry (and no id) is stored twice
            await self._run(lambda c: self._scripts["append_once"](keys=[self._k("lock"), key],
                                                                   args=[self._token, first, *lines], client=c))

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
        by_session: dict[str, list[Any]] = {}
        every: list[Any] = []
        for ev in events:
            body = _enc.encode(ev)
            by_session.setdefault(ev.sessionId, []).extend((ev.id, body))
            every.extend((ev.id, body))
        commands: list[Sequence[Any]] = []

        def ring(key: str, members: list[Any], size: int) -> None:
            step = 2 * _ZADD_CHUNK
            commands.extend(("ZADD", key, *members[i:i + step]) for i in range(0, len(members), step))
            commands.append(("ZREMRANGEBYRANK", key, 0, -size - 1))
        for sid, members in by_session.items():
            ring(self._k("e", sid), members, EVENT_RING)
        ring(self._k("e"), every, GLOBAL_RING)
        commands.append(("HSET", self._k("meta"), "last_event_id", top))
        await self._run(lambda c: self._write(c, *commands))

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
        await self._run(lambda c: self._write(c, ("HSET", self._k("d", collection), key, body)))

    async def doc_delete(self, collection: str, key: str) -> None:
        await self._run(lambda c: self._write(c, ("HDEL", self._k("d", collection), key)))

    async def doc_list(self, collection: str) -> dict[str, Any]:
        raw = await self._run(lambda c: c.hgetall(self._k("d", collection)))
        return {k.decode(): msgspec.json.decode(v) for k, v in sorted(raw.items())}

    # ---- append-only logs ----------------------------------------------------------------------
    async def log_append(self, log: str, record: Any) -> int:
        body = _enc.encode(record)
        return int(await self._run(lambda c: self._scripts["append"](
            keys=[self._k("lock"), self._k("ls", log), self._k("l", log)], args=[self._token, body], client=c)))

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
        await self._run(lambda c: self._write(c, ("ZREMRANGEBYSCORE", self._k("l", log), "-inf", f"({before}")))
