"""The PostgreSQL store (`AEGIS_SESSION_STORE=postgres`).

psycopg's asyncio API does not run under trio, so the sync driver runs in worker threads
(`trio.to_thread.run_sync`) over a small pool of autocommit connections, at most ``pgPoolMax`` at once.
Tables (``<schema>.<table>_*``, identifiers quoted by psycopg): ``meta`` (schema version, highest event id),
``sessions`` (one JSONB record per session), ``transcript`` (one row per entry, keyed by session and 0-based
position), ``events`` (one row per event, trimmed to the last EVENT_RING per session). A statement returns
only once committed, so ``save_session`` and the appends are durable when they return (PostgreSQL's own
``synchronous_commit`` decides what a machine crash keeps). One daemon per table set: a session-level advisory
lock, held on a dedicated connection for the store's life, refuses a second daemon at once; it is released
by PostgreSQL when the holder dies, even by SIGKILL."""

from __future__ import annotations

import collections
import contextlib
import re
import threading
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
import trio

from aegisd.core.errors import StoreUnavailable, Unavailable
from aegisd.core.models import SCHEMA_VERSION, Event, SessionRecord, TranscriptEntry
from aegisd.store._file import EVENT_RING
from aegisd.store._health import StoreHealth

if TYPE_CHECKING:
    import psycopg

    from aegisd.core.config import Config

log = structlog.get_logger("aegisd.store.postgres")

T = TypeVar("T")
_enc = msgspec.json.Encoder()
_rec_dec = msgspec.json.Decoder(SessionRecord)
_entry_dec = msgspec.json.Decoder(TranscriptEntry)
_event_dec = msgspec.json.Decoder(Event)
CONNECT_TIMEOUT_S = 5
WATCH_INTERVAL_S = 1.0  # how often the monitor checks the connection holding the lock


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class PostgresStore:
    on_fenced: Callable[[str | None, str], None] | None = None
    name = "postgres"

    def __init__(self, config: Config) -> None:
        self.url = config.postgresUrl
        self.schema = config.pgSchema or "public"
        self.table = config.pgTable or "aegis"
        self._limiter = trio.CapacityLimiter(max(1, config.pgPoolMax))
        self._idle: collections.deque[psycopg.Connection[Any]] = collections.deque()
        self._pool_lock = threading.Lock()
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._tcount: dict[str, int] = {}  # transcript length per session (this daemon is the only writer)
        self._ecount: dict[str, int] = {}  # events stored per session, to know when to trim
        self._last_event_id = 0
        self._closed = False
        self.health = StoreHealth("postgres")
        self._data_error: str | None = None  # why the last call failed (None: it worked)
        self._fenced: str | None = None  # why writes are refused: the single-writer lock is not held
        from psycopg import sql

        def t(suffix: str) -> sql.Composed:
            return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(f"{self.table}_{suffix}"))
        self._meta, self._sessions, self._transcript, self._events = t("meta"), t("sessions"), t("transcript"), \
            t("events")
        self._docs, self._logs, self._log_seq = t("docs"), t("logs"), t("log_seq")

    # ---- plumbing ------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        if not self.url:
            raise Unavailable("sessionStore is postgres but AEGIS_POSTGRES_URL (postgresUrl) is not set")
        try:
            # keepalives and tcp_user_timeout: a cut network fails a call within seconds instead of hanging
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="aegisd", keepalives=1, keepalives_idle=5,
                                   keepalives_interval=2, keepalives_count=3, tcp_user_timeout=15_000)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {mask_url(self.url)}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None

    def _with_conn(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn`` on a pooled connection (in a worker thread). A pooled connection found dead (the server
        restarted, the backend was terminated) is replaced by a new one once; a failure to connect or a new
        connection failing too marks the store degraded and raises StoreUnavailable."""
        import psycopg

        if self._fenced is not None:
            raise StoreUnavailable(f"PostgreSQL at {mask_url(self.url)}: {self._fenced}")
        with self._pool_lock:
            conn = self._idle.popleft() if self._idle else None
        for attempt in (1, 2):
            fresh = conn is None or conn.closed
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                result = fn(conn)
            except StoreUnavailable as exc:
                self._data_error = exc.message
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # the connection is gone: drop it; on a pooled one, try once more on a new connection
                if conn is not None:
                    conn.close()
                conn = None
                if attempt == 1 and not fresh:
                    continue
                reason = f"PostgreSQL at {mask_url(self.url)}: {_first_line(exc)}"
                self._data_error = reason
                raise StoreUnavailable(reason) from None
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            break
        assert conn is not None
        self._data_error = None
        with self._pool_lock:
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
        return result

    def _refresh_health(self) -> None:
        reason = self._fenced or self._data_error
        if reason is None:
            self.health.up()
        else:
            self.health.down(reason)
        self.health.sync()

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            # the call runs to its end whatever cancels the caller (a write is never half-abandoned), unless the
            # daemon gives up on the store at shutdown (health.bounded)
            with trio.CancelScope(shield=True), self.health.bounded():
                result = await trio.to_thread.run_sync(self._with_conn, fn, limiter=self._limiter,
                                                       abandon_on_cancel=True)
        finally:
            self._refresh_health()
        return result

    # ---- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        self._closed = False
        self._lock_conn = self._connect()
        try:
            self._open_locked(self._lock_conn)
        except BaseException:
            self._lock_conn.close()
            self._lock_conn = None
            raise

    def _lock_key(self) -> int:
        return zlib.crc32(f"aegisd:{self.schema}.{self.table}".encode())

    def _open_locked(self, lock_conn: psycopg.Connection[Any]) -> None:
        from psycopg import sql

        got = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key(),)).fetchone()
        if not (got and got[0]):
            raise Unavailable(f"another aegisd uses the PostgreSQL tables {self.schema}.{self.table}_* "
                              f"at {mask_url(self.url)}")
        with lock_conn.transaction():
            lock_conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value bigint NOT NULL)")
                              .format(self._meta))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, created_at bigint NOT "
                                      "NULL, body jsonb NOT NULL)").format(self._sessions))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (session_id text NOT NULL, pos integer NOT NULL, "
                                      "body jsonb NOT NULL, PRIMARY KEY (session_id, pos))").format(self._transcript))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, session_id text NOT "
                                      "NULL, body jsonb NOT NULL)").format(self._events))
            lock_conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (session_id, id)").format(
                sql.Identifier(f"{self.table}_events_by_session"), self._events))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (collection text NOT NULL, key text NOT NULL, "
                                      "body jsonb NOT NULL, PRIMARY KEY (collection, key))").format(self._docs))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, seq bigint NOT NULL)")
                              .format(self._log_seq))
            lock_conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text NOT NULL, seq bigint NOT NULL, "
                                      "body jsonb NOT NULL, PRIMARY KEY (name, seq))").format(self._logs))
            rows = dict(lock_conn.execute(sql.SQL("SELECT key, value FROM {}").format(self._meta)).fetchall())
            version = rows.get("schema_version", SCHEMA_VERSION)
            if version > SCHEMA_VERSION:
                raise Unavailable(f"the PostgreSQL tables {self.schema}.{self.table}_* hold schema version {version}; "
                                  f"this aegisd reads up to {SCHEMA_VERSION} (upgrade aegisd)")
            lock_conn.execute(sql.SQL("INSERT INTO {} VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE "
                                      "SET value = excluded.value").format(self._meta), (SCHEMA_VERSION,))
            self._last_event_id = int(rows.get("last_event_id", 0))
            for sid, n in lock_conn.execute(sql.SQL("SELECT session_id, count(*) FROM {} GROUP BY session_id")
                                            .format(self._transcript)):
                self._tcount[sid] = n
            for sid, n in lock_conn.execute(sql.SQL("SELECT session_id, count(*) FROM {} GROUP BY session_id")
                                            .format(self._events)):
                self._ecount[sid] = n
        log.info("store.opened", store="postgres", url=mask_url(self.url), tables=f"{self.schema}.{self.table}_*",
                 sessions_with_transcripts=len(self._tcount))

    async def close(self) -> None:
        def shut() -> None:
            with self._pool_lock:
                self._closed = True
                conns = list(self._idle)
                self._idle.clear()
            for c in conns:
                c.close()
            if self._lock_conn is not None:
                # release the lock before closing: the server ends a closed session's backend (and frees its
                # advisory locks) a moment after the client hangs up, and a daemon restarted at once would
                # find the lock still taken
                with contextlib.suppress(Exception):
                    self._lock_conn.execute("SELECT pg_advisory_unlock(%s)", (self._lock_key(),))
                self._lock_conn.close()
                self._lock_conn = None
        await trio.to_thread.run_sync(shut, abandon_on_cancel=True)  # the daemon bounds how long it waits

    async def flush(self) -> None:
        pass  # every statement has committed by the time it returned

    # ---- health --------------------------------------------------------------------------------
    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the connection that holds the single-writer lock (every WATCH_INTERVAL_S): when it is lost,
        writes are refused (another daemon could take the lock meanwhile) until a new connection takes the lock
        again; while the store is degraded, probe it so that health turns ok without waiting for a write."""
        task_status.started()
        while True:
            await trio.sleep(WATCH_INTERVAL_S)
            try:
                with self.health.bounded():
                    await trio.to_thread.run_sync(self._watch_once, abandon_on_cancel=True)
            except StoreUnavailable:
                return  # given up: the daemon is stopping
            self._refresh_health()

    def _watch_once(self) -> None:  # in a worker thread
        import psycopg

        if self._closed:
            return
        conn = self._lock_conn
        if conn is not None and self._fenced is None:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                conn.close()
                self._lock_conn = conn = None
                self._fenced = ("lost the connection holding the single-writer lock "
                                f"({_first_line(exc)}); "
                                "writes wait until the lock is taken again")
                log.error("store.lock_connection_lost", store="postgres", url=mask_url(self.url), error=str(exc))
        if self._lock_conn is None or self._fenced is not None:
            self._retake_lock()
        if self._data_error is not None and self._fenced is None:
            try:
                self._with_conn(lambda c: c.execute("SELECT 1"))
            except StoreUnavailable:
                pass

    def _retake_lock(self) -> None:  # in a worker thread
        import psycopg

        try:
            conn = self._lock_conn if self._lock_conn is not None and not self._lock_conn.closed else self._connect()
            self._lock_conn = conn
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key(),)).fetchone()
        except (StoreUnavailable, psycopg.Error) as exc:
            if self._lock_conn is not None:
                self._lock_conn.close()
                self._lock_conn = None
            why = exc.message if isinstance(exc, StoreUnavailable) else str(exc).strip()
            self._fenced = f"reconnecting to take the single-writer lock again: {why}"
            return
        if self._closed:  # the store was closed meanwhile (this thread was left behind): hold nothing
            conn.close()
            self._lock_conn = None
            return
        if got and got[0]:
            self._fenced = None
            log.warning("store.lock_retaken", store="postgres", url=mask_url(self.url))
            return
        if not (self._fenced or "").startswith("another session"):
            log.error("store.lock_taken_by_another", store="postgres", url=mask_url(self.url),
                      tables=f"{self.schema}.{self.table}_*",
                      hint="another aegisd took the single-writer lock while the connection was lost: this daemon "
                           "refuses every write rather than write concurrently; stop one of them")
        self._fenced = (f"another session holds the single-writer lock of {self.schema}.{self.table}_* (another "
                        "aegisd, or this daemon's old connection the server has not ended yet): writes refused")

    # ---- sessions ------------------------------------------------------------------------------
    async def load_sessions(self) -> list[SessionRecord]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL("SELECT id, body::text FROM {} ORDER BY created_at, id")
                                .format(self._sessions)).fetchall()
        out = []
        for sid, body in await self._run(q):
            try:
                rec = _rec_dec.decode(body)
            except msgspec.DecodeError as exc:
                log.warning("store.bad_record_skipped", session_id=sid, error=str(exc))
                continue
            if rec.schemaVersion > SCHEMA_VERSION:
                log.warning("store.newer_schema_skipped", session_id=sid, version=rec.schemaVersion)
                continue
            out.append(rec)
        return out

    async def save_session(self, record: SessionRecord) -> None:
        from psycopg import sql

        body = _enc.encode(record).decode()

        def q(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("INSERT INTO {} (id, created_at, body) VALUES (%s, %s, %s::jsonb) ON CONFLICT (id) "
                                 "DO UPDATE SET body = excluded.body").format(self._sessions),
                         (record.id, record.createdAt, body))
        await self._run(q)

    async def delete_session(self, session_id: str) -> None:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                for table in (self._sessions, self._transcript, self._events):
                    col = "id" if table is self._sessions else "session_id"
                    conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(table, sql.Identifier(col)),
                                 (session_id,))
        await self._run(q)
        self._tcount.pop(session_id, None)
        self._ecount.pop(session_id, None)

    # ---- transcripts ---------------------------------------------------------------------------
    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None:
        if not entries:
            return
        from psycopg import sql

        start = self._tcount.get(session_id, 0)
        self._tcount[session_id] = start + len(entries)  # reserved before the await: positions stay in order
        rows = [(session_id, start + i, _enc.encode(e).decode()) for i, e in enumerate(entries)]

        def q(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                # a retry of a write whose commit's answer was lost finds its rows stored: the same positions, the
                # same entries (this daemon is the positions' only writer), so nothing is written twice
                cur.executemany(sql.SQL("INSERT INTO {} (session_id, pos, body) VALUES (%s, %s, %s::jsonb) "
                                        "ON CONFLICT (session_id, pos) DO NOTHING").format(self._transcript), rows)
        try:
            await self._run(q)
        except StoreUnavailable:
            if self._tcount.get(session_id) == start + len(entries):  # not stored: the positions are free again
                self._tcount[session_id] = start
            raise

    async def read_transcript(self, session_id: str, start: int = 0,
                              limit: int | None = None) -> list[TranscriptEntry]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL("SELECT body::text FROM {} WHERE session_id = %s AND pos >= %s ORDER BY pos "
                                        "LIMIT %s").format(self._transcript), (session_id, start, limit)).fetchall()
        return [_entry_dec.decode(body) for (body,) in await self._run(q)]

    async def transcript_count(self, session_id: str) -> int:
        return self._tcount.get(session_id, 0)

    # ---- events --------------------------------------------------------------------------------
    async def append_events(self, events: list[Event]) -> None:
        if not events:
            return
        from psycopg import sql

        rows = [(ev.id, ev.sessionId, _enc.encode(ev).decode()) for ev in events]
        top = max(self._last_event_id, max(ev.id for ev in events))
        self._last_event_id = top
        trim = []
        for ev in events:
            n = self._ecount[ev.sessionId] = self._ecount.get(ev.sessionId, 0) + 1
            if n > 2 * EVENT_RING:
                trim.append(ev.sessionId)
                self._ecount[ev.sessionId] = EVENT_RING

        def q(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql.SQL("INSERT INTO {} (id, session_id, body) VALUES (%s, %s, %s::jsonb) "
                                        "ON CONFLICT (id) DO NOTHING").format(self._events), rows)
                cur.execute(sql.SQL("INSERT INTO {} VALUES ('last_event_id', %s) ON CONFLICT (key) DO UPDATE "
                                    "SET value = GREATEST({}.value, excluded.value)").format(self._meta, self._meta),
                            (top,))
                for sid in dict.fromkeys(trim):  # keep the newest EVENT_RING of this session
                    cur.execute(sql.SQL("DELETE FROM {} WHERE session_id = %s AND id < (SELECT min(id) FROM (SELECT "
                                        "id FROM {} WHERE session_id = %s ORDER BY id DESC LIMIT %s) AS newest)")
                                .format(self._events, self._events), (sid, sid, EVENT_RING))
        await self._run(q)

    async def read_events(self, *, session_id: str | None, after_id: int, limit: int = 1000) -> list[Event]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            if session_id is None:
                return conn.execute(sql.SQL("SELECT body::text FROM {} WHERE id > %s ORDER BY id LIMIT %s")
                                    .format(self._events), (after_id, limit)).fetchall()
            return conn.execute(sql.SQL("SELECT body::text FROM {} WHERE session_id = %s AND id > %s ORDER BY id "
                                        "LIMIT %s").format(self._events), (session_id, after_id, limit)).fetchall()
        return [_event_dec.decode(body) for (body,) in await self._run(q)]

    async def last_event_id(self) -> int:
        return self._last_event_id

    # ---- documents -----------------------------------------------------------------------------
    async def doc_get(self, collection: str, key: str) -> Any | None:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute(sql.SQL("SELECT body::text FROM {} WHERE collection = %s AND key = %s")
                                .format(self._docs), (collection, key)).fetchone()
        row = await self._run(q)
        return None if row is None else msgspec.json.decode(row[0])

    async def doc_put(self, collection: str, key: str, doc: Any) -> None:
        from psycopg import sql

        body = _enc.encode(doc).decode()

        def q(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("INSERT INTO {} (collection, key, body) VALUES (%s, %s, %s::jsonb) ON CONFLICT "
                                 "(collection, key) DO UPDATE SET body = excluded.body").format(self._docs),
                         (collection, key, body))
        await self._run(q)

    async def doc_delete(self, collection: str, key: str) -> None:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("DELETE FROM {} WHERE collection = %s AND key = %s").format(self._docs),
                         (collection, key))
        await self._run(q)

    async def doc_list(self, collection: str) -> dict[str, Any]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL("SELECT key, body::text FROM {} WHERE collection = %s ORDER BY key")
                                .format(self._docs), (collection,)).fetchall()
        return {key: msgspec.json.decode(body) for key, body in await self._run(q)}

    # ---- append-only logs ----------------------------------------------------------------------
    async def log_append(self, log: str, record: Any) -> int:
        from psycopg import sql

        body = _enc.encode(record).decode()

        def q(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():  # the counter's row lock orders concurrent appends to one log
                row = conn.execute(sql.SQL("INSERT INTO {} AS s (name, seq) VALUES (%s, 1) ON CONFLICT (name) DO "
                                           "UPDATE SET seq = s.seq + 1 RETURNING seq").format(self._log_seq),
                                   (log,)).fetchone()
                assert row is not None
                conn.execute(sql.SQL("INSERT INTO {} (name, seq, body) VALUES (%s, %s, %s::jsonb)")
                             .format(self._logs), (log, row[0], body))
                return int(row[0])
        return await self._run(q)

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL("SELECT seq, body::text FROM {} WHERE name = %s AND seq > %s ORDER BY seq "
                                        "LIMIT %s").format(self._logs), (log, after, limit)).fetchall()
        return [(int(seq), msgspec.json.decode(body)) for seq, body in await self._run(q)]

    async def log_trim(self, log: str, before: int) -> None:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s AND seq < %s").format(self._logs), (log, before))
        await self._run(q)
