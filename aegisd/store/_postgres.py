"""The PostgreSQL store (`AEGIS_SESSION_STORE=postgres`), and the cluster's coordination engine.

psycopg's asyncio API does not run under trio, so the sync driver runs in worker threads
(`trio.to_thread.run_sync`) over a small pool of autocommit connections, at most ``pgPoolMax`` at once.
Tables (``<schema>.<table>_*``, identifiers quoted by psycopg): ``meta`` (schema version, highest event id),
``sessions`` (one JSONB record per session, its ``owner`` node and fencing ``epoch``), ``transcript`` (one row per
entry, keyed by session and 0-based position), ``events`` (one row per event, trimmed to the last EVENT_RING per
session), ``nodes`` (one row per node: its lease), ``docs``, ``logs``. A statement returns only once committed,
so ``save_session`` and the appends are durable when they return (PostgreSQL's own ``synchronous_commit`` decides
what a machine crash keeps).

Every daemon on the same tables is a node of one cluster (docs/cluster.md):
- Each node holds a lease (its ``nodes`` row, ``expires_at`` on the server's clock), renewed every third of
  ``nodeLeaseMs`` on a connection of its own. A node that could not renew in time stops every agent it runs
  before its lease can have expired (``on_fenced(None, …)``) and joins again as a new incarnation.
- Each session has an owner and an epoch, bumped whenever the owner changes. Every write for a session proves
  ownership in the same statement or transaction (``owner = me AND epoch = e``); zero rows means the session
  moved: nothing is written, :class:`SessionFenced` is raised and ``on_fenced(session_id, …)`` stops its agent.
- Event ids are allocated under the ``last_event_id`` row's lock, held until commit, so ids become visible in
  commit order: a reader tailing by id never skips a row that commits late. ``append_events`` returns the events
  stored, numbered.
- Changes are announced with NOTIFY on one channel (on commit, only as a wake-up: readers read the rows): ``e``
  (events), ``s<TAB>id`` (a session record), ``d<TAB>collection<TAB>key``, ``l<TAB>log``, ``n`` (nodes). A
  dedicated connection LISTENs and calls the ``on_*`` callbacks on the trio thread; after it reconnects it calls
  ``on_resync`` (what was announced meanwhile was missed)."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import socket
import threading
import uuid
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
import trio

from aegisd.core.errors import SessionFenced, StoreUnavailable, Unavailable
from aegisd.core.models import SCHEMA_VERSION, Event, SessionRecord, TranscriptEntry
from aegisd.core.states import LIVE, TERMINAL
from aegisd.store._file import EVENT_RING
from aegisd.store._health import StoreHealth

if TYPE_CHECKING:
    import psycopg

    from aegisd.core.config import Config
    from aegisd.store import NodeSpec

log = structlog.get_logger("aegisd.store.postgres")

T = TypeVar("T")
_enc = msgspec.json.Encoder()
_rec_dec = msgspec.json.Decoder(SessionRecord)
_entry_dec = msgspec.json.Decoder(TranscriptEntry)
_event_dec = msgspec.json.Decoder(Event)
CONNECT_TIMEOUT_S = 5
LIVE_NAMES = sorted(s.value for s in LIVE)
TERMINAL_NAMES = sorted(s.value for s in TERMINAL)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class PostgresStore:
    on_fenced: Callable[[str | None, str], None] | None = None
    name = "postgres"
    assigns_event_ids = True  # append_events numbers the events (one order across the cluster)
    # what other nodes changed (and this one: harmless), called on the trio thread; see the module's docstring
    on_events: Callable[[], None] | None = None
    on_session_changed: Callable[[str], None] | None = None
    on_doc_changed: Callable[[str, str | None], None] | None = None
    on_log_appended: Callable[[str], None] | None = None
    on_nodes_changed: Callable[[], None] | None = None
    on_resync: Callable[[], None] | None = None
    # the lease is held again after it was lost: the sessions this node still owns, to resume
    on_rejoined: Callable[[list[SessionRecord]], None] | None = None

    def __init__(self, config: Config) -> None:
        from aegisd.store import NodeSpec

        self.url = config.postgresUrl
        self.schema = config.pgSchema or "public"
        self.table = config.pgTable or "aegis"
        self._limiter = trio.CapacityLimiter(max(1, config.pgPoolMax))
        self._idle: collections.deque[psycopg.Connection[Any]] = collections.deque()
        self._pool_lock = threading.Lock()
        self._tcount: dict[str, int] = {}  # transcript length per owned session (its owner is its only writer)
        self._ecount: dict[str, int] = {}  # events stored per session, to know when to trim
        self._last_event_id = 0
        self._closed = False
        self.health = StoreHealth("postgres")
        self._data_error: str | None = None  # why the last call failed (None: it worked)
        # the cluster: who this node is (the daemon sets it before open), its lease and what it owns
        # (a daemon sets its own identity; a store opened on its own is the node of its state dir)
        self.node: NodeSpec = NodeSpec(id=f"store-{zlib.crc32(str(config.state_path).encode()):08x}",
                                       host=socket.gethostname(),
                                       max_sessions=config.maxSessions, lease_ms=config.nodeLeaseMs)
        self.incarnation = uuid.uuid4().hex
        self._owned: dict[str, int] = {}  # session id -> the epoch this node owns it at
        self._lost: set[str] = set()  # sessions this node owned and lost: never written again
        self._lease_lost: str | None = None  # why the lease is not held (writes for sessions are refused)
        self._lease_until = 0.0  # trio clock: the lease surely holds until then
        self._lease_conn: psycopg.Connection[Any] | None = None
        self._lease_error: str | None = None
        self._flock: int | None = None  # the state dir's node lock: no other live daemon there
        self.sessions_running: Callable[[], int] = lambda: len(self._owned)
        self._token: trio.lowlevel.TrioToken | None = None
        self.channel = f"aegis_{self._lock_key():08x}"
        from psycopg import sql

        def t(suffix: str) -> sql.Composed:
            return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(f"{self.table}_{suffix}"))
        self._meta, self._sessions, self._transcript, self._events = t("meta"), t("sessions"), t("transcript"), \
            t("events")
        self._docs, self._logs, self._log_seq, self._nodes = t("docs"), t("logs"), t("log_seq"), t("nodes")

    # ---- plumbing ------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        if not self.url:
            raise Unavailable("sessionStore is postgres but AEGIS_POSTGRES_URL (postgresUrl) is not set")
        try:
            # keepalives and tcp_user_timeout: a cut network fails a call within seconds instead of hanging
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name=f"aegisd {self.node.id}"[:63], keepalives=1, keepalives_idle=5,
                                   keepalives_interval=2, keepalives_count=3, tcp_user_timeout=15_000)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {mask_url(self.url)}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None

    def _with_conn(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn`` on a pooled connection (in a worker thread). A pooled connection found dead (the server
        restarted, the backend was terminated) is replaced by a new one once; a failure to connect or a new
        connection failing too marks the store degraded and raises StoreUnavailable."""
        import psycopg

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
        reason = self._lease_lost or self._data_error
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

    def _notify(self, cur: Any, payload: str) -> None:
        from psycopg import sql

        cur.execute(sql.SQL("SELECT pg_notify(%s, %s)"), (self.channel, payload))

    # ---- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        sent = trio.current_time()
        await trio.to_thread.run_sync(self._open_sync)
        self._lease_until = sent + self.lease_s

    def _open_sync(self) -> None:
        self._closed = False
        self._take_flock()
        conn = self._connect()
        try:
            self._create(conn)
            self._join(conn, previous=None)
            self._claim_own(conn)
        except BaseException:
            conn.close()
            self._release_flock()
            raise
        with self._pool_lock:
            self._idle.append(conn)
        log.info("store.opened", store="postgres", url=mask_url(self.url), tables=f"{self.schema}.{self.table}_*",
                 node=self.node.id, sessions_owned=len(self._owned))

    def _lock_key(self) -> int:
        return zlib.crc32(f"aegisd:{self.schema}.{self.table}".encode())

    def _take_flock(self) -> None:
        """The state dir's node lock: held, it proves no other live daemon runs there, so this one may take over
        the lease its own predecessor left (a restart after kill -9 need not wait for it to expire)."""
        if not self.node.state_dir or self._flock is not None:
            return
        os.makedirs(self.node.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.node.state_dir, "node.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise Unavailable(f"another aegisd runs with the state dir {self.node.state_dir}") from None
        self._flock = fd

    def _release_flock(self) -> None:
        if self._flock is not None:
            os.close(self._flock)
            self._flock = None

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg import sql

        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key(),))  # nodes starting together
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value bigint NOT NULL)")
                         .format(self._meta))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, created_at bigint NOT "
                                 "NULL, body jsonb NOT NULL)").format(self._sessions))
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS owner text, ADD COLUMN IF NOT EXISTS "
                                 "epoch bigint NOT NULL DEFAULT 0").format(self._sessions))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (owner)").format(
                sql.Identifier(f"{self.table}_sessions_by_owner"), self._sessions))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (session_id text NOT NULL, pos integer NOT NULL, "
                                 "body jsonb NOT NULL, PRIMARY KEY (session_id, pos))").format(self._transcript))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, session_id text NOT "
                                 "NULL, body jsonb NOT NULL)").format(self._events))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (session_id, id)").format(
                sql.Identifier(f"{self.table}_events_by_session"), self._events))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (collection text NOT NULL, key text NOT NULL, "
                                 "body jsonb NOT NULL, PRIMARY KEY (collection, key))").format(self._docs))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, seq bigint NOT NULL)")
                         .format(self._log_seq))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text NOT NULL, seq bigint NOT NULL, "
                                 "body jsonb NOT NULL, PRIMARY KEY (name, seq))").format(self._logs))
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, incarnation text NOT NULL, url text NOT NULL, "
                "host text NOT NULL, state_dir text NOT NULL, pid integer NOT NULL, version text NOT NULL, "
                "status text NOT NULL, started_at timestamptz NOT NULL, heartbeat_at timestamptz NOT NULL, "
                "expires_at timestamptz NOT NULL, max_sessions integer NOT NULL, sessions integer NOT NULL, "
                "work_dirs jsonb NOT NULL)").format(self._nodes))
            rows = dict(conn.execute(sql.SQL("SELECT key, value FROM {}").format(self._meta)).fetchall())
            version = rows.get("schema_version", SCHEMA_VERSION)
            if version > SCHEMA_VERSION:
                raise Unavailable(f"the PostgreSQL tables {self.schema}.{self.table}_* hold schema version {version}; "
                                  f"this aegisd reads up to {SCHEMA_VERSION} (upgrade aegisd)")
            conn.execute(sql.SQL("INSERT INTO {} VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE "
                                 "SET value = GREATEST({}.value, excluded.value)").format(self._meta, self._meta),
                         (SCHEMA_VERSION,))
            conn.execute(sql.SQL("INSERT INTO {} VALUES ('last_event_id', 0) ON CONFLICT (key) DO NOTHING")
                         .format(self._meta))
            self._last_event_id = int(rows.get("last_event_id", 0))

    def _join(self, conn: psycopg.Connection[Any], *, previous: str | None) -> None:
        """Take this node's lease: a new row, or the row of a node of this id whose lease expired, or the one this
        daemon's predecessor in the same state dir left (it is dead: this daemon holds the state dir's lock)."""
        from psycopg import sql

        node = self.node
        lease_s = node.lease_ms / 1000
        row = conn.execute(sql.SQL(
            "INSERT INTO {n} AS n (id, incarnation, url, host, state_dir, pid, version, status, started_at, "
            "heartbeat_at, expires_at, max_sessions, sessions, work_dirs) VALUES (%(id)s, %(inc)s, %(url)s, %(host)s, "
            "%(dir)s, %(pid)s, %(version)s, 'up', now(), now(), now() + make_interval(secs => %(lease)s), %(max)s, 0, "
            "%(dirs)s::jsonb) ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation, url = excluded.url, "
            "host = excluded.host, state_dir = excluded.state_dir, pid = excluded.pid, version = excluded.version, "
            "status = CASE WHEN n.status = 'draining' THEN 'draining' ELSE 'up' END, started_at = now(), "
            "heartbeat_at = now(), expires_at = excluded.expires_at, max_sessions = excluded.max_sessions, "
            "work_dirs = excluded.work_dirs WHERE n.expires_at < now() OR n.status = 'down' "
            "OR n.incarnation = %(prev)s OR (%(takeover)s AND n.host = excluded.host "
            "AND n.state_dir = excluded.state_dir) RETURNING id").format(n=self._nodes),
            {"id": node.id, "inc": self.incarnation, "url": node.url, "host": node.host, "dir": node.state_dir,
             "pid": os.getpid(), "version": node.version, "lease": lease_s, "max": node.max_sessions,
             "dirs": _enc.encode(node.work_dirs).decode(), "prev": previous or "",
             "takeover": self._flock is not None}).fetchone()
        if row is None:
            other = conn.execute(sql.SQL("SELECT url, host, pid, expires_at - now() FROM {} WHERE id = %s")
                                 .format(self._nodes), (node.id,)).fetchone()
            url, host, pid, left = other if other else ("?", "?", "?", "?")
            raise Unavailable(f"node id {node.id!r} is held by a live aegisd ({url}, host {host}, pid {pid}; its "
                              f"lease runs for {left} more): give this node another AEGIS_NODE_ID (nodeId)")
        self._notify(conn, "n")

    def _claim_own(self, conn: psycopg.Connection[Any]) -> list[SessionRecord]:
        """The sessions this node owns (and those of a store written before there were nodes): each epoch is bumped,
        so a write still in flight from an earlier incarnation can never land. Returns them."""
        from psycopg import sql

        rows = conn.execute(sql.SQL("UPDATE {} SET owner = %s, epoch = epoch + 1 WHERE owner = %s OR owner IS NULL "
                                    "RETURNING id, epoch, body::text").format(self._sessions),
                            (self.node.id, self.node.id)).fetchall()
        self._owned = {sid: int(epoch) for sid, epoch, _ in rows}
        self._load_counts(conn, list(self._owned))
        for sid, _, _ in rows:
            self._notify(conn, f"s\t{sid}")
        return [r for r in (self._decode(body, self.node.id) for _, _, body in rows) if r is not None]

    def _load_counts(self, conn: psycopg.Connection[Any], sids: list[str]) -> None:
        from psycopg import sql

        if not sids:
            return
        for table, counts in ((self._transcript, self._tcount), (self._events, self._ecount)):
            for sid, n in conn.execute(sql.SQL("SELECT session_id, count(*) FROM {} WHERE session_id = ANY(%s) "
                                               "GROUP BY session_id").format(table), (sids,)):
                counts[sid] = n

    async def close(self) -> None:
        def shut() -> None:
            from psycopg import sql

            with self._pool_lock:
                self._closed = True
                conns = list(self._idle)
                self._idle.clear()
            # leave the cluster: the lease ends now (no other node waits for it to expire), the sessions stay
            # this node's (live ones: resumed by its next start, or adopted once its row is down)
            for c in conns[:1]:
                with contextlib.suppress(Exception):
                    c.execute(sql.SQL("UPDATE {} SET expires_at = now(), status = CASE WHEN status = 'draining' "
                                      "THEN 'draining' ELSE 'down' END WHERE id = %s AND incarnation = %s")
                              .format(self._nodes), (self.node.id, self.incarnation))
                    self._notify(c, "n")
            for c in conns:
                c.close()
            if self._lease_conn is not None:
                self._lease_conn.close()
                self._lease_conn = None
            self._release_flock()
        await trio.to_thread.run_sync(shut, abandon_on_cancel=True)  # the daemon bounds how long it waits

    async def flush(self) -> None:
        pass  # every statement has committed by the time it returned

    # ---- the lease, and what other nodes announce ----------------------------------------------
    @property
    def lease_s(self) -> float:
        return self.node.lease_ms / 1000

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease every third of it (on a connection of its own), stop every agent once it cannot have
        been renewed in time, join again when the store is back; LISTEN for what other nodes announce; while the
        store is degraded, probe it so that health turns ok without waiting for a write."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            nursery.start_soon(self._watch_lease)
            task_status.started()
            while True:
                try:
                    await self._renew()
                except StoreUnavailable:
                    if self.health.given_up is not None:
                        nursery.cancel_scope.cancel()
                        return
                if self._data_error is not None:
                    try:
                        await self._run(lambda c: c.execute("SELECT 1"))
                    except StoreUnavailable:
                        pass
                self._refresh_health()
                await trio.sleep(self.lease_s / 3)

    async def _renew(self) -> None:
        sent = trio.current_time()
        with self.health.bounded():
            held = await trio.to_thread.run_sync(self._renew_sync, abandon_on_cancel=True)
        if held:
            self._lease_until = sent + self.lease_s
            return
        if self._lease_lost is None:
            self._lose_lease("another node took this node's lease (it had expired)")
        rejoined = await trio.to_thread.run_sync(self._rejoin_sync, abandon_on_cancel=True)
        if rejoined is not None:
            self._lease_until = sent + self.lease_s
            lost = self._lease_lost
            self._lease_lost = None
            self._refresh_health()
            log.warning("store.lease_rejoined", node=self.node.id, sessions=len(rejoined), after=lost)
            if self.on_rejoined is not None:
                self.on_rejoined(rejoined)

    def _renew_sync(self) -> bool:
        """Renew the lease; False: it is lost (or not held: join again). Raises StoreUnavailable when PostgreSQL
        cannot be reached."""
        import psycopg
        from psycopg import sql

        if self._lease_lost is not None:
            return False
        try:
            conn = self._lease_conn if self._lease_conn is not None and not self._lease_conn.closed \
                else self._connect()
            self._lease_conn = conn
            row = conn.execute(sql.SQL(
                "UPDATE {} SET expires_at = now() + make_interval(secs => %s), heartbeat_at = now(), sessions = %s "
                "WHERE id = %s AND incarnation = %s AND status <> 'down' AND expires_at > now() RETURNING status")
                .format(self._nodes), (self.lease_s, self.sessions_running(), self.node.id, self.incarnation)
            ).fetchone()
        except (StoreUnavailable, psycopg.Error) as exc:
            if self._lease_conn is not None:
                self._lease_conn.close()
                self._lease_conn = None
            why = exc.message if isinstance(exc, StoreUnavailable) else _first_line(exc)
            self._lease_error = why
            raise StoreUnavailable(f"renewing the node's lease: {why}") from None
        self._lease_error = None
        return row is not None

    def _rejoin_sync(self) -> list[SessionRecord] | None:
        """Join again as a new incarnation; the sessions still this node's (not adopted meanwhile) are claimed
        again (epochs bumped) and returned, to resume. None: not possible yet."""
        import psycopg

        previous, self.incarnation = self.incarnation, uuid.uuid4().hex
        try:
            conn = self._lease_conn if self._lease_conn is not None and not self._lease_conn.closed \
                else self._connect()
            self._lease_conn = conn
            before = set(self._owned)
            with conn.transaction():
                self._join(conn, previous=previous)
                records = self._claim_own(conn)
            self._lost |= before - set(self._owned)
            self._lost -= set(self._owned)
            return [r for r in records if r.status in LIVE]
        except (StoreUnavailable, Unavailable, psycopg.Error) as exc:
            self.incarnation = previous
            if self._lease_conn is not None and self._lease_conn.closed:
                self._lease_conn = None
            log.warning("store.lease_rejoin_failed", node=self.node.id, error=getattr(exc, "message", str(exc)))
            return None

    async def _watch_lease(self) -> None:
        """Stop every agent before the lease can have expired on the server: renewals started at t hold it until
        t + lease at the earliest (the server's now() is later than t); stop a safety margin before that."""
        margin = min(3.0, max(0.5, self.lease_s / 5))
        while True:
            await trio.sleep(0.1)
            if self._lease_lost is None and trio.current_time() > self._lease_until - margin:
                self._lose_lease(f"could not renew the node's lease within {self.lease_s:g} s"
                                 + (f" ({self._lease_error})" if self._lease_error else ""))

    def _lose_lease(self, reason: str) -> None:
        self._lease_lost = reason
        log.error("store.lease_lost", node=self.node.id, reason=reason, sessions=len(self._owned))
        self._refresh_health()
        if self.on_fenced is not None:
            self.on_fenced(None, f"node {self.node.id} lost its lease: {reason}")

    async def _listen(self) -> None:
        await trio.to_thread.run_sync(self._listen_sync, abandon_on_cancel=True,
                                      limiter=trio.CapacityLimiter(1))

    def _listen_sync(self) -> None:  # a thread of its own, for the store's life
        import time

        import psycopg

        first = True
        while not self._closed:
            try:
                conn = self._connect()
            except (StoreUnavailable, Unavailable):
                time.sleep(1.0)
                continue
            try:
                conn.execute(f"LISTEN {self.channel}")
                if not first:
                    self._post("*")  # what was announced while not listening is unknown: read it all again
                first = False
                while not self._closed:
                    for note in conn.notifies(timeout=0.5):
                        self._post(note.payload)
            except psycopg.Error as exc:
                log.warning("store.listen_lost", error=_first_line(exc))
                time.sleep(0.2)
            except trio.RunFinishedError:
                return
            finally:
                conn.close()

    def _post(self, payload: str) -> None:
        if self._token is None:
            return
        trio.from_thread.run_sync(self._dispatch, payload, trio_token=self._token)

    def _dispatch(self, payload: str) -> None:
        kind, _, rest = payload.partition("\t")
        try:
            if kind == "e" and self.on_events is not None:
                self.on_events()
            elif kind == "s" and self.on_session_changed is not None and rest not in self._owned:
                self.on_session_changed(rest)
            elif kind == "d" and self.on_doc_changed is not None:
                collection, _, key = rest.partition("\t")
                self.on_doc_changed(collection, key)
            elif kind == "l" and self.on_log_appended is not None:
                self.on_log_appended(rest)
            elif kind == "n" and self.on_nodes_changed is not None:
                self.on_nodes_changed()
            elif kind == "*" and self.on_resync is not None:
                self.on_resync()
        except Exception:  # a listener's bug must not end the listening
            log.exception("store.notification_failed", payload=payload[:200])

    # ---- nodes ---------------------------------------------------------------------------------
    async def nodes(self) -> list[dict[str, Any]]:
        """Every node's row, with ``alive`` (its lease unexpired on the server's clock) and times in ms."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL(
                "SELECT id, url, host, pid, version, status, (extract(epoch FROM started_at) * 1000)::bigint, "
                "(extract(epoch FROM heartbeat_at) * 1000)::bigint, expires_at > now(), max_sessions, sessions, "
                "work_dirs::text FROM {} ORDER BY id").format(self._nodes)).fetchall()
        keys = ("id", "url", "host", "pid", "version", "status", "startedAt", "lastHeartbeat", "alive", "capacity",
                "sessions", "workDirs")
        out = []
        for row in await self._run(q):
            node = dict(zip(keys, row, strict=True))
            node["workDirs"] = msgspec.json.decode(node["workDirs"])
            out.append(node)
        return out

    async def set_node(self, node_id: str, *, status: str | None = None, url: str | None = None) -> bool:
        """Change a node's status (draining / up) or URL; False when there is no such node."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                row = conn.execute(sql.SQL(
                    "UPDATE {} SET status = CASE WHEN status = 'down' OR %(status)s::text IS NULL THEN status "
                    "ELSE %(status)s::text END, url = COALESCE(%(url)s::text, url) WHERE id = %(id)s RETURNING id")
                    .format(self._nodes), {"status": status, "url": url, "id": node_id}).fetchone()
                self._notify(conn, "n")
            return row is not None
        return await self._run(q)

    async def mark_lost_nodes(self) -> list[str]:
        """Mark ``down`` the nodes whose lease expired; their ids."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[str]:
            with conn.transaction():
                rows = conn.execute(sql.SQL("UPDATE {} SET status = 'down' WHERE expires_at < now() AND status <> "
                                            "'down' RETURNING id").format(self._nodes)).fetchall()
                if rows:
                    self._notify(conn, "n")
            return [r[0] for r in rows]
        return await self._run(q)

    async def orphans(self) -> list[SessionRecord]:
        """The live sessions of nodes that are down (their lease expired), oldest first."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL(
                "SELECT s.body::text, s.owner FROM {s} s JOIN {n} n ON n.id = s.owner WHERE n.status = 'down' AND "
                "n.expires_at < now() AND s.body->>'status' = ANY(%s) ORDER BY s.created_at, s.id")
                .format(s=self._sessions, n=self._nodes), (LIVE_NAMES,)).fetchall()
        return [r for r in (self._decode(body, owner) for body, owner in await self._run(q)) if r is not None]

    async def claim(self, session_ids: list[str]) -> list[SessionRecord]:
        """Take over these sessions of lost nodes (each still live and still its lost owner's: rows another node
        claims at the same time are skipped); their epochs bumped. The records claimed."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            with conn.transaction():
                rows = conn.execute(sql.SQL(
                    "UPDATE {s} SET owner = %(me)s, epoch = epoch + 1 WHERE id IN (SELECT s.id FROM {s} s JOIN {n} n "
                    "ON n.id = s.owner WHERE s.id = ANY(%(ids)s) AND n.status = 'down' AND n.expires_at < now() "
                    "AND s.body->>'status' = ANY(%(live)s) FOR UPDATE OF s SKIP LOCKED) RETURNING id, epoch, "
                    "body::text").format(s=self._sessions, n=self._nodes),
                    {"me": self.node.id, "ids": session_ids, "live": LIVE_NAMES}).fetchall()
                for sid, _, _ in rows:
                    self._notify(conn, f"s\t{sid}")
                self._load_counts(conn, [sid for sid, _, _ in rows])
            return rows
        if self._lease_lost is not None:
            return []
        rows = await self._run(q)
        for sid, epoch, _ in rows:
            self._owned[sid] = int(epoch)
            self._lost.discard(sid)
        # each as its last owner saved it (its node: the lost one; the adopter records itself)
        return [r for r in (self._decode(body, None) for _, _, body in rows) if r is not None]

    async def shared_secret(self, candidate: str) -> str:
        """The cluster's secret for node-to-node calls when none is configured: the first node's ``candidate``."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> str:
            conn.execute(sql.SQL("INSERT INTO {} (collection, key, body) VALUES ('cluster', 'secret', %s::jsonb) "
                                 "ON CONFLICT DO NOTHING").format(self._docs), (_enc.encode(candidate).decode(),))
            row = conn.execute(sql.SQL("SELECT body::text FROM {} WHERE collection = 'cluster' AND key = 'secret'")
                               .format(self._docs)).fetchone()
            assert row is not None
            return str(msgspec.json.decode(row[0]))
        return await self._run(q)

    def owns(self, session_id: str) -> bool:
        return session_id in self._owned and self._lease_lost is None

    # ---- sessions ------------------------------------------------------------------------------
    def _decode(self, body: str, owner: str | None) -> SessionRecord | None:
        try:
            rec = _rec_dec.decode(body)
        except msgspec.DecodeError as exc:
            log.warning("store.bad_record_skipped", error=str(exc))
            return None
        if rec.schemaVersion > SCHEMA_VERSION:
            log.warning("store.newer_schema_skipped", session_id=rec.id, version=rec.schemaVersion)
            return None
        if owner is not None:
            rec.node = owner
        return rec

    async def load_sessions(self) -> list[SessionRecord]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL("SELECT body::text, owner FROM {} ORDER BY created_at, id")
                                .format(self._sessions)).fetchall()
        return [r for r in (self._decode(body, owner) for body, owner in await self._run(q)) if r is not None]

    async def load_session(self, ident: str, *, prefix: bool = False) -> list[SessionRecord]:
        """The session with this id (or, ``prefix``, those whose id starts with it; at most 2)."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            if prefix:
                pattern = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                return conn.execute(sql.SQL("SELECT body::text, owner FROM {} WHERE id LIKE %s LIMIT 2")
                                    .format(self._sessions), (pattern,)).fetchall()
            return conn.execute(sql.SQL("SELECT body::text, owner FROM {} WHERE id = %s").format(self._sessions),
                                (ident,)).fetchall()
        return [r for r in (self._decode(body, owner) for body, owner in await self._run(q)) if r is not None]

    def _fenced(self, session_id: str) -> SessionFenced:
        reason = self._lease_lost or "another node owns it now"
        self._lost.add(session_id)
        self._owned.pop(session_id, None)
        return SessionFenced(f"session {session_id} is no longer run by node {self.node.id} ({reason}); try again")

    def _tell_fenced(self, session_id: str, exc: SessionFenced) -> None:
        if self.on_fenced is not None:
            self.on_fenced(session_id, exc.message)

    def _check_writable(self, session_id: str) -> None:
        if session_id in self._lost or self._lease_lost is not None:
            raise SessionFenced(f"session {session_id} is no longer run by node {self.node.id} "
                                f"({self._lease_lost or 'another node owns it now'})")

    async def save_session(self, record: SessionRecord) -> None:
        from psycopg import sql

        self._check_writable(record.id)
        body = _enc.encode(record).decode()
        epoch = self._owned.get(record.id, 0)
        terminal = record.status in TERMINAL and record.id not in self._owned

        def q(conn: psycopg.Connection[Any]) -> Any:
            # a new session is this node's (epoch 1); an owned one is written only at the epoch it is owned at; an
            # ended session another node ran may be annotated (its agent is gone: there is nothing to fence)
            return conn.execute(sql.SQL(
                "WITH up AS (INSERT INTO {s} AS s (id, created_at, body, owner, epoch) VALUES (%(id)s, %(created)s, "
                "%(body)s::jsonb, %(me)s, 1) ON CONFLICT (id) DO UPDATE SET body = excluded.body "
                "WHERE (s.owner = %(me)s AND s.epoch = %(epoch)s) OR (%(terminal)s AND s.body->>'status' = "
                "ANY(%(ended)s)) RETURNING s.epoch, s.owner) SELECT epoch, owner, pg_notify(%(chan)s, %(note)s) "
                "FROM up").format(s=self._sessions),
                {"id": record.id, "created": record.createdAt, "body": body, "me": self.node.id, "epoch": epoch,
                 "terminal": terminal, "ended": TERMINAL_NAMES, "chan": self.channel, "note": f"s\t{record.id}"}
            ).fetchone()
        row = await self._run(q)
        if row is None:
            exc = self._fenced(record.id)
            self._tell_fenced(record.id, exc)
            raise exc
        if row[1] == self.node.id and record.id not in self._owned:
            self._owned[record.id] = int(row[0])

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
        self._owned.pop(session_id, None)

    # ---- transcripts ---------------------------------------------------------------------------
    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None:
        if not entries:
            return
        from psycopg import sql

        self._check_writable(session_id)
        epoch = self._owned.get(session_id)  # None: no session record of this node's (yet)
        if session_id not in self._tcount:  # a session this node has not written before: what the store holds
            stored_count = await self._count(self._transcript, session_id)
            self._tcount.setdefault(session_id, stored_count)
        start = self._tcount[session_id]
        self._tcount[session_id] = start + len(entries)  # reserved before the await: positions stay in order
        positions = list(range(start, start + len(entries)))
        bodies = [_enc.encode(e).decode() for e in entries]

        def q(conn: psycopg.Connection[Any]) -> bool:
            # written only while this node owns the session at its epoch (the row share-locked: a takeover waits);
            # a retry of a write whose commit's answer was lost finds its rows stored: nothing is written twice
            with conn.transaction():
                row = conn.execute(sql.SQL("SELECT owner, epoch FROM {} WHERE id = %s FOR SHARE")
                                   .format(self._sessions), (session_id,)).fetchone()
                if row is not None and (row[0] != self.node.id or (epoch is not None and row[1] != epoch)):
                    return False
                conn.execute(sql.SQL("INSERT INTO {} (session_id, pos, body) SELECT %s, p, b::jsonb FROM "
                                     "unnest(%s::int[], %s::text[]) AS t(p, b) ON CONFLICT (session_id, pos) DO "
                                     "NOTHING").format(self._transcript), (session_id, positions, bodies))
            return True
        try:
            stored = await self._run(q)
        except StoreUnavailable:
            if self._tcount.get(session_id) == start + len(entries):  # not stored: the positions are free again
                self._tcount[session_id] = start
            raise
        if not stored:
            exc = self._fenced(session_id)
            self._tell_fenced(session_id, exc)
            raise exc

    async def read_transcript(self, session_id: str, start: int = 0,
                              limit: int | None = None) -> list[TranscriptEntry]:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(sql.SQL("SELECT body::text FROM {} WHERE session_id = %s AND pos >= %s ORDER BY pos "
                                        "LIMIT %s").format(self._transcript), (session_id, start, limit)).fetchall()
        return [_entry_dec.decode(body) for (body,) in await self._run(q)]

    async def transcript_count(self, session_id: str) -> int:
        if session_id in self._owned:
            return self._tcount.get(session_id, 0)
        return await self._count(self._transcript, session_id)  # another node's session: what the store holds

    async def _count(self, table: Any, session_id: str) -> int:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE session_id = %s").format(table),
                                (session_id,)).fetchone()
        row = await self._run(q)
        return int(row[0]) if row else 0

    # ---- events --------------------------------------------------------------------------------
    async def append_events(self, events: list[Event]) -> list[Event]:
        """Store events and number them (ids in commit order across the cluster); the events stored, numbered.
        Events of a session this node no longer owns are dropped (and its agent stopped)."""
        if not events:
            return []
        from psycopg import sql

        lost = {ev.sessionId for ev in events if ev.sessionId in self._lost}
        if self._lease_lost is not None:
            lost |= {ev.sessionId for ev in events if ev.sessionId in self._owned}
        checked = {ev.sessionId: self._owned[ev.sessionId] for ev in events
                   if ev.sessionId in self._owned and ev.sessionId not in lost}
        batch = [ev for ev in events if ev.sessionId not in lost]

        def q(conn: psycopg.Connection[Any]) -> tuple[list[Event], set[str]]:
            with conn.transaction(), conn.cursor() as cur:
                fenced: set[str] = set()
                if checked:
                    sids = list(checked)
                    held = dict(cur.execute(sql.SQL(
                        "SELECT id, epoch FROM {} WHERE id = ANY(%s) AND owner = %s FOR SHARE")
                        .format(self._sessions), (sids, self.node.id)).fetchall())
                    fenced = {sid for sid in sids if held.get(sid) != checked[sid]}
                keep = [ev for ev in batch if ev.sessionId not in fenced]
                if not keep:
                    return [], fenced
                row = cur.execute(sql.SQL("UPDATE {} SET value = value + %s WHERE key = 'last_event_id' RETURNING "
                                          "value").format(self._meta), (len(keep),)).fetchone()
                assert row is not None
                first = int(row[0]) - len(keep) + 1
                for i, ev in enumerate(keep):
                    ev.id = first + i
                cur.execute(sql.SQL("INSERT INTO {} (id, session_id, body) SELECT i, s, b::jsonb FROM "
                                    "unnest(%s::bigint[], %s::text[], %s::text[]) AS t(i, s, b)").format(self._events),
                            ([ev.id for ev in keep], [ev.sessionId for ev in keep],
                             [_enc.encode(ev).decode() for ev in keep]))
                for sid in self._to_trim(keep):  # keep the newest EVENT_RING of this session
                    cur.execute(sql.SQL("DELETE FROM {} WHERE session_id = %s AND id < (SELECT min(id) FROM (SELECT "
                                        "id FROM {} WHERE session_id = %s ORDER BY id DESC LIMIT %s) AS newest)")
                                .format(self._events, self._events), (sid, sid, EVENT_RING))
                self._notify(cur, "e")
                return keep, fenced
        for sid in {ev.sessionId for ev in batch} - set(self._ecount):  # how many the store holds already
            stored_count = await self._count(self._events, sid)
            self._ecount.setdefault(sid, stored_count)
        stored, fenced = await self._run(q)
        if stored:
            self._last_event_id = max(self._last_event_id, stored[-1].id)
        for sid in fenced | lost:
            exc = self._fenced(sid)
            self._tell_fenced(sid, exc)
        return stored

    def _to_trim(self, events: list[Event]) -> list[str]:
        trim = []
        for ev in events:
            n = self._ecount[ev.sessionId] = self._ecount.get(ev.sessionId, 0) + 1
            if n > 2 * EVENT_RING:
                trim.append(ev.sessionId)
                self._ecount[ev.sessionId] = EVENT_RING
        return list(dict.fromkeys(trim))

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
        """The highest event id committed (ids are allocated under a lock held until commit: none below it is
        still to come)."""
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute(sql.SQL("SELECT value FROM {} WHERE key = 'last_event_id'").format(self._meta)
                                ).fetchone()
        row = await self._run(q)
        self._last_event_id = max(self._last_event_id, int(row[0]) if row else 0)
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
            conn.execute(sql.SQL("WITH up AS (INSERT INTO {} (collection, key, body) VALUES (%s, %s, %s::jsonb) ON "
                                 "CONFLICT (collection, key) DO UPDATE SET body = excluded.body RETURNING 1) "
                                 "SELECT pg_notify(%s, %s) FROM up").format(self._docs),
                         (collection, key, body, self.channel, f"d\t{collection}\t{key}"))
        await self._run(q)

    async def doc_delete(self, collection: str, key: str) -> None:
        from psycopg import sql

        def q(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("WITH gone AS (DELETE FROM {} WHERE collection = %s AND key = %s RETURNING 1) "
                                 "SELECT pg_notify(%s, %s) FROM gone").format(self._docs),
                         (collection, key, self.channel, f"d\t{collection}\t{key}"))
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
                self._notify(conn, f"l\t{log}")
                return int(row[0])
        return await self._run(q)

    async def log_append_after(self, log: str, record: Any, after: int) -> int | None:
        """Append only if the log's last sequence number is ``after`` (the cluster's nodes extend one hash chain,
        aegisd/auth/audit.py); None: another node appended first."""
        from psycopg import sql

        body = _enc.encode(record).decode()

        def q(conn: psycopg.Connection[Any]) -> int | None:
            with conn.transaction():  # the counter's row, locked: appends to one log are serialized
                conn.execute(sql.SQL("INSERT INTO {} (name, seq) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING")
                             .format(self._log_seq), (log,))
                row = conn.execute(sql.SQL("SELECT seq FROM {} WHERE name = %s FOR UPDATE").format(self._log_seq),
                                   (log,)).fetchone()
                if row is None or int(row[0]) != after:
                    return None
                conn.execute(sql.SQL("UPDATE {} SET seq = %s WHERE name = %s").format(self._log_seq), (after + 1, log))
                conn.execute(sql.SQL("INSERT INTO {} (name, seq, body) VALUES (%s, %s, %s::jsonb)")
                             .format(self._logs), (log, after + 1, body))
                self._notify(conn, f"l\t{log}")
                return after + 1
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


__all__ = ["PostgresStore", "mask_url"]
