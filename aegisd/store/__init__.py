"""Persistence. The daemon talks to a :class:`Store`; `file` is the embedded default, and the
PostgreSQL and Redis stores implement the same interface.

Durability contract (every implementation):
- ``save_session`` returns only once the record is durable (file store: written, fsynced, renamed,
  directory fsynced). Operations acknowledge a client only after it returns, so nothing acknowledged is
  lost on ``kill -9`` of the daemon or a machine crash.
- ``append_transcript`` / ``append_events`` are append-only. A returned call survives ``kill -9`` of the
  daemon (the data is in the kernel); ``flush`` (called periodically, at turn end and on shutdown) makes
  it survive a machine crash too.
- Records carry ``schemaVersion``; a store refuses to load records from a newer schema.
- The store may fail; the daemon may not. A call the store cannot make durable (its server down, its directory
  gone) raises ``StoreUnavailable`` (503 STORE_UNAVAILABLE + Retry-After to an operation) and marks ``health``
  degraded; the daemon's own writes retry through :func:`until_stored` until the store is back.

Besides sessions, every store keeps what the features, auth and notifiers persist, in two shapes:
- documents: ``collection`` + ``key`` -> one JSON document (``doc_get`` / ``doc_put`` / ``doc_delete`` /
  ``doc_list``). A put replaces the whole document atomically and is durable when it returns.
- append-only logs: ``log_append`` stores one JSON record and returns its sequence number, assigned by the
  store (1, 2, 3... per log, never reused, even after a trim); ``log_read`` from a sequence number on;
  ``log_trim`` drops the records before one. An append is durable when it returns.
Features reach them through the narrow :class:`Collection` and :class:`RecordLog` (one collection or log
each), never through the whole store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
import structlog
import trio

from aegisd.core.models import Event, SessionRecord, TranscriptEntry
from aegisd.store._health import STORE_RETRY, StoreHealth, until_stored
from aegisd.store._names import check_name

_log = structlog.get_logger("aegisd.store")

if TYPE_CHECKING:
    from aegisd.core.config import Config

T = TypeVar("T")


__all__ = ["STORE_RETRY", "Collection", "Documents", "LogWriter", "Logs", "NodeSpec", "RecordLog", "Store",
           "StoreHealth", "migrate_legacy", "open_store", "probe_store", "until_stored"]


class NodeSpec(msgspec.Struct, kw_only=True):
    """Who this daemon is to a store other daemons may share (the PostgreSQL cluster, aegisd/cluster)."""

    id: str
    url: str = ""
    host: str = ""
    state_dir: str = ""  # the daemon's state dir: a restart there may take over its own unexpired lease
    version: str = ""
    max_sessions: int = 1000
    work_dirs: list[str] = []
    lease_ms: int = 15_000


class Store(Protocol):
    name: str
    health: StoreHealth  # ok, or degraded with the reason (GET /v1/health shows it)
    # told when this daemon may no longer write for a session (None: for any; the reason): its agents must stop
    # at once (the cluster's fencing on PostgreSQL, the single-writer lock on Redis)
    on_fenced: Callable[[str | None, str], None] | None

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the store's connection while the daemon runs (reconnect, take the lock again, probe while
        degraded) and keep ``health`` current; returns at once where there is nothing to watch."""

    async def open(self) -> None:
        """Create directories/tables, take the single-writer lock, load indexes."""

    async def close(self) -> None:
        """Flush everything and release the lock."""

    async def flush(self) -> None:
        """Make every write so far durable (fsync for the file store, shared by concurrent callers)."""

    # sessions
    async def load_sessions(self) -> list[SessionRecord]:
        """Every stored session, terminal ones included, oldest first."""

    async def save_session(self, record: SessionRecord) -> None:
        """Insert or replace one session record: visible to a restarted daemon when this returns, durable
        (across a machine crash) once flush() returns (the file store; the others are durable at once)."""

    async def delete_session(self, session_id: str) -> None:
        """Remove a session and its transcript and events (used by retention, not by kill)."""

    # transcripts (entry ids are 1-based and dense per session)
    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None: ...

    async def read_transcript(self, session_id: str, start: int = 0,
                              limit: int | None = None) -> list[TranscriptEntry]:
        """Entries with index ``start`` (0-based) onwards, at most ``limit``."""

    async def transcript_count(self, session_id: str) -> int: ...

    # events (ids global and monotonic; kept per session in a bounded ring, plus a global ring)
    assigns_event_ids: bool  # False: the bus numbers events; True (the cluster): append_events does

    async def append_events(self, events: list[Event]) -> list[Event] | None:
        """Store events. A store that numbers them (``assigns_event_ids``) sets their ids and returns the events
        it stored (in id order; a session this daemon no longer runs loses its own); the others return None."""

    async def read_events(self, *, session_id: str | None, after_id: int,
                          limit: int = 1000) -> list[Event]:
        """Events with id > after_id, oldest first (one session, or all sessions when None)."""

    async def last_event_id(self) -> int:
        """The highest event id ever appended (0 when none), so ids stay monotonic across restarts."""

    # documents: collection + key -> one JSON document
    async def doc_get(self, collection: str, key: str) -> Any | None:
        """The document, or None."""

    async def doc_put(self, collection: str, key: str, doc: Any) -> None:
        """Insert or replace one document atomically; durable when it returns."""

    async def doc_delete(self, collection: str, key: str) -> None:
        """Remove one document (nothing if absent)."""

    async def doc_list(self, collection: str) -> dict[str, Any]:
        """Every document of a collection, by key."""

    # append-only logs: sequence numbers assigned by the store, monotonic per log
    async def log_append(self, log: str, record: Any) -> int:
        """Store one record, durably; its sequence number (1 for the first ever)."""

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        """(seq, record) with seq > ``after``, oldest first, at most ``limit``."""

    async def log_trim(self, log: str, before: int) -> None:
        """Drop the records with seq < ``before`` (the numbering goes on where it was)."""


class Documents(Protocol):
    """What a :class:`Collection` needs of a store."""

    async def doc_get(self, collection: str, key: str) -> Any | None: ...

    async def doc_put(self, collection: str, key: str, doc: Any) -> None: ...

    async def doc_delete(self, collection: str, key: str) -> None: ...

    async def doc_list(self, collection: str) -> dict[str, Any]: ...


class Logs(Protocol):
    """What a :class:`RecordLog` needs of a store."""

    async def log_append(self, log: str, record: Any) -> int: ...

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]: ...

    async def log_trim(self, log: str, before: int) -> None: ...


class Collection:
    """One collection of JSON documents: the narrow interface a feature is handed."""

    def __init__(self, store: Documents, name: str) -> None:
        self.store, self.name = store, check_name(name)

    async def get(self, key: str) -> Any | None:
        return await self.store.doc_get(self.name, key)

    async def put(self, key: str, doc: Any) -> None:
        await self.store.doc_put(self.name, key, doc)

    async def delete(self, key: str) -> None:
        await self.store.doc_delete(self.name, key)

    async def list(self) -> dict[str, Any]:
        return await self.store.doc_list(self.name)


class RecordLog:
    """One append-only log of JSON records: the narrow interface a feature is handed."""

    def __init__(self, store: Logs, name: str) -> None:
        self.store, self.name = store, check_name(name)

    async def append(self, record: Any) -> int:
        return await self.store.log_append(self.name, record)

    async def read(self, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        return await self.store.log_read(self.name, after, limit)

    async def trim(self, before: int) -> None:
        await self.store.log_trim(self.name, before)

    async def append_after(self, record: Any, after: int) -> int | None:
        """Append ``record`` only if the log's last sequence number is ``after`` (None: another daemon appended
        meanwhile). A store one daemon has to itself (file, memory, Redis) appends at once."""
        conditional = getattr(self.store, "log_append_after", None)
        if conditional is None:
            return await self.append(record)
        return await conditional(self.name, record, after)  # type: ignore[no-any-return]

    async def append_missing(self, records: list[Any]) -> None:
        """Append ``records`` to a log that may already hold a prefix of them (a migration that crashed half
        way, before it renamed its file): only those not there yet."""
        have = len(await self.read())
        for record in records[have:]:
            await self.append(record)


class LogWriter:
    """Records queued for one log and stored in order: by ``stored()``, which a caller awaits for what it made
    (an operation before it answers), or by ``run()``, a writer task for the rest. A store error is logged and
    leaves the records queued, in order, for the next try (the audit and the metering ledger use it)."""

    def __init__(self, log: RecordLog, *, encode: Callable[[Any], Any] = lambda record: record) -> None:
        self.log = log
        self.pending: list[Any] = []
        self.lock = trio.Lock()  # held while storing; readers take it to see stored + pending as one
        self._encode = encode
        self._wake = trio.Event()

    def put(self, record: Any) -> None:
        self.pending.append(record)
        self._wake.set()

    async def stored(self) -> bool:
        """Store every record queued so far; True once they all are, False when the store refused one."""
        if not self.pending:  # a record leaves the queue once it is stored: nothing to wait for
            return True
        async with self.lock:
            while self.pending:
                try:
                    await self._store_one(self.pending[0])
                except Exception as exc:  # noqa: BLE001 - the writer's owner must not go down with the store
                    _log.error("store.log_write_failed", log=self.log.name, error=str(exc))
                    return False
                self.pending.pop(0)
        return True

    async def _store_one(self, record: Any) -> None:
        """Store the oldest queued record (a subclass may store it conditionally, e.g. a hash chain)."""
        await self.log.append(self._encode(record))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not await self.stored():  # the store is away: try again in a moment
                await trio.sleep(1.0)
                self._wake.set()


def open_store(config: Config) -> Store:
    """The store named by ``config.sessionStore`` (not yet opened)."""
    kind = config.sessionStore
    if kind == "file":
        from aegisd.store._file import FileStore

        return FileStore(config.state_path)
    if kind in ("postgres", "redis"):
        try:
            if kind == "postgres":
                from aegisd.store._postgres import PostgresStore  # type: ignore[import-not-found]

                return PostgresStore(config)  # type: ignore[no-any-return]
            from aegisd.store._redis import RedisStore  # type: ignore[import-not-found]

            return RedisStore(config)  # type: ignore[no-any-return]
        except ImportError as exc:
            from aegisd.core.errors import ValidationError

            raise ValidationError(f"sessionStore {kind!r} is not available in this version of aegisd ({exc}); "
                                  "use 'file'") from None
    if kind == "memory":
        from aegisd.store._memory import MemoryStore

        return MemoryStore()
    raise ValueError(f"unknown session store {kind!r}")


def probe_store(config: Config) -> str:
    """Can the configured server store be reached (for `ag doctor`)? Returns a description, raises
    Unavailable with the reason. Does not take the store's lock: the daemon may be running."""
    from aegisd.core.errors import Unavailable

    if config.sessionStore == "postgres":
        import psycopg

        from aegisd.store._postgres import mask_url

        try:
            with psycopg.connect(config.postgresUrl, connect_timeout=5) as conn:
                version = conn.execute("SHOW server_version").fetchone()
        except psycopg.Error as exc:
            raise Unavailable(f"PostgreSQL at {mask_url(config.postgresUrl)}: {str(exc).strip().splitlines()[0]}"
                              ) from None
        return f"PostgreSQL {version[0] if version else '?'} at {mask_url(config.postgresUrl)}"
    if config.sessionStore == "redis":
        import redis

        from aegisd.store._postgres import mask_url

        try:
            with redis.Redis.from_url(config.redisUrl, socket_connect_timeout=5, socket_timeout=5) as r:
                info = r.info("server")
                try:
                    aof = r.config_get("appendonly").get("appendonly")
                except redis.ResponseError:  # CONFIG disabled (managed Redis): cannot tell
                    aof = None
        except redis.RedisError as exc:
            raise Unavailable(f"Redis at {mask_url(config.redisUrl)}: {exc}") from None
        persistence = {"yes": "appendonly", "no": "no AOF"}.get(aof or "", "persistence unknown")
        return f"Redis {info.get('redis_version', '?')} at {mask_url(config.redisUrl)} ({persistence})"
    return f"{config.sessionStore} store under {config.state_path}"


async def migrate_legacy(path: Path, read: Callable[[Path], T], write: Callable[[T], Awaitable[object]]) -> bool:
    """Move what an earlier aegisd kept in its own file (or directory) into the store, once: ``read`` it (in a
    worker thread), ``write`` it to the store, then rename it to ``<name>.migrated`` so the next start skips it
    (and the user still has it). Returns whether there was anything to migrate. A crash before the rename
    migrates it again at the next start; the writes are puts by key, so that is harmless."""
    import structlog
    import trio

    from aegisd.store._fs import fsync_dir

    if not await trio.to_thread.run_sync(path.exists):
        return False
    data = await trio.to_thread.run_sync(read, path)
    await write(data)
    def rename() -> Path:
        target, n = path.with_name(path.name + ".migrated"), 1
        while target.exists():  # an earlier migration's: keep both
            n += 1
            target = path.with_name(f"{path.name}.migrated.{n}")
        path.replace(target)
        fsync_dir(path.parent)
        return target
    target = await trio.to_thread.run_sync(rename)
    structlog.get_logger("aegisd.store").info("store.migrated", file=str(path), to=str(target))
    return True
