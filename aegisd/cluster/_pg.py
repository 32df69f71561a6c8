"""The cluster on PostgreSQL: several nodes on the same tables (aegisd/store/_postgres.py holds the leases, owners,
epochs and the NOTIFY channel; this module decides with them).

- Every node keeps every session's record (its own and the others', refreshed when the store announces a change),
  so lists and access checks answer locally; an operation on a live session another node runs is forwarded to it
  (aegisd/ops/_registry.py asks :meth:`owner_url`, :meth:`forward` calls ``POST /v1/cluster/call`` there).
- Placement: a new session goes to the least-loaded node that is up (not draining), admits its workDir and has
  room, preferring this node on ties; ``node`` on the create names one.
- Adoption: every third of the lease each node marks ``down`` the nodes whose lease expired and claims its share
  of their live sessions whose workDir it admits (rows locked with SKIP LOCKED: each goes to one node), resuming
  them with ACP session/load; a session no live node admits ends ``crashed`` with reason ``node_lost``."""

from __future__ import annotations

import hmac
import math
import os
import secrets
import ssl
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import structlog
import trio

from aegisd.auth.principal import Credential, Principal
from aegisd.cluster._node import Cluster, NodeInfo
from aegisd.core.errors import AegisError, NotFound, StoreUnavailable, Unavailable, ValidationError
from aegisd.core.events import Ended, StatusChanged
from aegisd.core.models import CrashInfo, SessionRecord, now_ms
from aegisd.core.states import LIVE, State

if TYPE_CHECKING:
    from aegisd.bus import EventBus
    from aegisd.cluster._identity import NodeIdentity
    from aegisd.core.config import Config
    from aegisd.sessions import SessionManager
    from aegisd.store._postgres import PostgresStore

log = structlog.get_logger("aegisd.cluster")

SECRET_HEADER = "X-Aegis-Cluster"
CALL_PATH = "/v1/cluster/call"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def admits(work_dirs: list[str], work_dir: str) -> bool:
    """Whether a node publishing these allowedWorkDirs can run a session in ``work_dir`` (its own check, on its
    own host, is the one that counts: this one only places)."""
    path = os.path.normpath(work_dir)
    return any(_within(path, root) for root in work_dirs)


def principal_to_wire(p: Principal) -> dict[str, Any]:
    out = asdict(p)
    out["permissions"] = sorted(p.permissions) if p.permissions is not None else None
    return out


def principal_from_wire(raw: Any) -> Principal:
    if not isinstance(raw, dict):
        raise ValidationError("cluster call: principal must be an object")
    cred = raw.get("credential")
    perms = raw.get("permissions")
    try:
        return Principal(kind=str(raw["kind"]), key_id=raw.get("key_id"), role=str(raw["role"]),
                         name=str(raw["name"]), permissions=frozenset(perms) if perms is not None else None,
                         session_id=raw.get("session_id"),
                         credential=Credential(**cred) if isinstance(cred, dict) else None)
    except (KeyError, TypeError) as exc:
        raise ValidationError(f"cluster call: bad principal ({exc})") from None


class RemoteError(AegisError):
    """An error another node answered with, passed on as it was (code, status, message, details)."""

    def __init__(self, code: str, status: int, message: str, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.code = code  # type: ignore[misc]
        self.status = status  # type: ignore[misc]


class PgCluster(Cluster):
    def __init__(self, config: Config, identity: NodeIdentity, manager: SessionManager, store: PostgresStore,
                 bus: EventBus) -> None:
        super().__init__(config, identity, manager)
        self.store = store
        self.bus = bus
        self.secret = config.clusterSecret
        self._nodes: dict[str, dict[str, Any]] = {}  # the last view of the nodes table, by id
        self._dirty: set[str] = set()  # sessions to read again (another node changed them)
        self._wake = trio.Event()
        self._nodes_stale = trio.Event()
        self._http: httpx.AsyncClient | None = None
        self.adopted = 0
        self.forwarded = 0
        self._orphaned: dict[str, float] = {}  # a lost node's session -> when this node first saw it orphaned

    @property
    def multi_node(self) -> bool:
        return True

    # ---- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Once the store is open: the secret nodes share, the store's announcements wired here."""
        if not self.secret:  # none configured (every node on loopback): the first node's, kept in the store
            self.secret = await self.store.shared_secret(secrets.token_urlsafe(32))
        store = self.store
        store.on_session_changed = self._session_changed
        store.on_events = self.bus.poke
        store.on_nodes_changed = self._nodes_stale.set
        caches = store.on_resync  # the feature caches' (aegisd/app/_changes.py): they read everything again too

        def resync() -> None:
            self._resync()
            if caches is not None:
                caches()
        store.on_resync = resync
        store.on_rejoined = self._rejoined
        fence = store.on_fenced  # the manager's: stop those agents; then read who runs them now

        def fenced(session_id: str | None, reason: str) -> None:
            if fence is not None:
                fence(session_id, reason)
            if session_id is None:
                self._resync()
            else:
                self._session_changed(session_id)
        store.on_fenced = fenced
        store.sessions_running = self.local_sessions
        await self._refresh_nodes()

    def set_url(self, url: str) -> None:
        """The URL is known once HTTP is bound (port 0): tell the other nodes."""
        self.url = url
        self.store.node.url = url

    async def publish_url(self) -> None:
        await self.store.set_node(self.node_id, url=self.url)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        verify: ssl.SSLContext | bool = True
        try:
            from aegisd.cluster._tls import client_ssl_context  # type: ignore[import-not-found,unused-ignore]

            verify = client_ssl_context(self.config)
        except ImportError:
            pass
        async with httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(30.0, connect=3.0, read=None),
                                     limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)) as http:
            self._http = http
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sync_records)
                task_status.started()
                # a lost node is noticed within a second of its lease expiring (two cheap queries per round)
                interval = min(1.0, max(0.2, self.store.lease_s / 3))
                while True:
                    with trio.move_on_after(interval):
                        await self._nodes_stale.wait()
                    self._nodes_stale = trio.Event()
                    try:
                        await self._refresh_nodes()
                        await self._adopt()
                    except StoreUnavailable as exc:
                        log.warning("cluster.round_failed", error=exc.message)

    # ---- what other nodes changed ----------------------------------------------------------------
    def _session_changed(self, session_id: str) -> None:
        self._dirty.add(session_id)
        self._wake.set()

    def changed(self, session_id: str) -> None:
        self._session_changed(session_id)

    def _resync(self) -> None:
        self._dirty.add("*")
        self._wake.set()
        self.bus.poke()
        self._nodes_stale.set()

    def _rejoined(self, records: list[SessionRecord]) -> None:
        for rec in records:
            self.manager.adopt(rec, why="lease_lost")
        self._resync()  # the sessions it lost meanwhile are other nodes' now

    async def _sync_records(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, set()
            try:
                if "*" in dirty:
                    for rec in await self.store.load_sessions():
                        if not self.store.owns(rec.id):
                            self.manager.remote(rec)
                    continue
                for sid in dirty:
                    await self.refresh(sid)
            except StoreUnavailable:
                self._dirty |= dirty
                await trio.sleep(0.5)
                self._wake.set()

    async def refresh(self, session_id: str) -> SessionRecord | None:
        """Read one session again from the store (another node runs it)."""
        if self.store.owns(session_id):
            return self.manager.records.get(session_id)
        recs = await self.store.load_session(session_id)
        if recs:
            self.manager.remote(recs[0])
            return recs[0]
        return None

    async def lookup(self, ident: str) -> None:
        """A session id (or prefix) this node has not heard of yet (created a moment ago on another node): read it
        from the store."""
        if ident in self.manager.records:
            return
        for rec in await self.store.load_session(ident, prefix=len(ident) < 36):
            if rec.id not in self.manager.records:
                self.manager.remote(rec)

    # ---- nodes -----------------------------------------------------------------------------------
    async def _refresh_nodes(self) -> None:
        rows = await self.store.nodes()
        self._nodes = {row["id"]: row for row in rows}
        mine = self._nodes.get(self.node_id)
        if mine is not None:
            self.draining = mine["status"] == "draining"

    def _status(self, row: dict[str, Any]) -> str:
        return "down" if not row["alive"] or row["status"] == "down" else str(row["status"])

    def _live_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self.manager.records.values():
            if rec.status in LIVE and rec.node:
                counts[rec.node] = counts.get(rec.node, 0) + 1
        return counts

    async def nodes(self) -> list[NodeInfo]:
        await self._refresh_nodes()
        counts = self._live_counts()
        out = []
        for row in self._nodes.values():
            local = row["id"] == self.node_id
            out.append(NodeInfo(id=row["id"], url=self.url if local else row["url"], status=self._status(row),
                                sessions=counts.get(row["id"], 0), capacity=row["capacity"], version=row["version"],
                                lastHeartbeat=row["lastHeartbeat"], startedAt=row["startedAt"], host=row["host"],
                                workDirs=list(row["workDirs"]), local=local))
        return out

    async def drain(self, node_id: str, draining: bool = True) -> NodeInfo:
        if not await self.store.set_node(node_id, status="draining" if draining else "up"):
            raise NotFound(f"node {node_id} not found (`ag nodes` lists them)")
        for node in await self.nodes():
            if node.id == node_id:
                return node
        raise NotFound(f"node {node_id} not found (`ag nodes` lists them)")

    # ---- routing -----------------------------------------------------------------------------------
    def owner_url(self, rec: SessionRecord) -> str | None:
        if rec.status not in LIVE or rec.node in (None, self.node_id):
            return None
        row = self._nodes.get(rec.node)
        if row is None or not row["alive"] or row["status"] == "down":
            raise Unavailable(f"session {rec.id} runs on node {rec.node}, which is not answering its lease; a live "
                              f"node takes the session over once that lease expires (within "
                              f"{self.store.lease_s:g} s)", details={"retryAfter": 2, "node": rec.node})
        return str(row["url"])

    async def place(self, work_dir: str, node: str | None) -> str | None:
        await self._refresh_nodes()
        counts = self._live_counts()
        if node is not None:
            row = self._nodes.get(node)
            if row is None:
                raise NotFound(f"node {node} not found (`ag nodes` lists them)")
            if self._status(row) != "up":
                raise Unavailable(f"node {node} is {self._status(row)}: it takes no new sessions",
                                  details={"retryAfter": 5, "node": node})
            return None if node == self.node_id else str(row["url"])
        candidates = []
        admitting = False
        for row in self._nodes.values():
            if self._status(row) != "up" or not work_dir or not admits(list(row["workDirs"]), work_dir):
                continue
            admitting = True
            load = counts.get(row["id"], 0)
            if load >= row["capacity"]:
                continue
            candidates.append((load / max(1, row["capacity"]), row["id"] != self.node_id, row["id"]))
        if not candidates:
            # no node can: this one says why (an invalid workDir, its own maxSessions, draining), unless only
            # other nodes admit the directory and they are all full
            if admitting and not admits(self.manager.workdirs.roots, work_dir):
                from aegisd.core.errors import CapacityExceeded

                raise CapacityExceeded(f"no node can take a session in {work_dir}: every node that admits it is "
                                       "full (`ag nodes`)")
            if self.draining:
                raise Unavailable(f"node {self.node_id} is draining and no other node can take a session in "
                                  f"{work_dir} (`ag nodes`)", details={"retryAfter": 5})
            return None
        _, _, chosen = min(candidates)
        return None if chosen == self.node_id else str(self._nodes[chosen]["url"])

    def node_of_url(self, url: str) -> str:
        for row in self._nodes.values():
            if row["url"] == url:
                return str(row["id"])
        return url

    async def forward(self, url: str, op: str, params: Any, principal: Any, request_id: str) -> Any:
        """Run an operation on the node at ``url``; its result (wire form), or its error raised here."""
        if self._http is None:
            raise Unavailable("the cluster is not running yet", details={"retryAfter": 1})
        body = msgspec.json.encode({"op": op, "params": params, "principal": principal_to_wire(principal),
                                    "requestId": request_id, "from": self.node_id})
        self.forwarded += 1
        try:
            resp = await self._http.post(url.rstrip("/") + CALL_PATH, content=body,
                                         headers={SECRET_HEADER: self.secret, "Content-Type": "application/json",
                                                  "X-Request-Id": request_id})
        except httpx.HTTPError as exc:
            node = self.node_of_url(url)
            raise Unavailable(f"node {node} ({url}) did not answer ({exc.__class__.__name__}: {exc}); its sessions "
                              f"move to a live node once its lease expires", details={"retryAfter": 2, "node": node}
                              ) from None
        try:
            answer = msgspec.json.decode(resp.content)
        except msgspec.DecodeError:
            raise Unavailable(f"node {self.node_of_url(url)} answered {resp.status_code} without JSON",
                              details={"retryAfter": 2}) from None
        if isinstance(answer, dict) and answer.get("ok") is True:
            return answer.get("result")
        err = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(err, dict):
            raise Unavailable(f"node {self.node_of_url(url)} answered {resp.status_code}: {str(answer)[:200]}",
                              details={"retryAfter": 2})
        raise RemoteError(str(err.get("code", "INTERNAL_ERROR")), int(err.get("status", resp.status_code)),
                          str(err.get("message", "")), err.get("details"))

    def check_secret(self, presented: str | None) -> bool:
        return presented is not None and bool(self.secret) and hmac.compare_digest(presented.encode(),
                                                                                    self.secret.encode())

    # ---- adoption ----------------------------------------------------------------------------------
    async def _adopt(self) -> None:
        """Mark lost nodes down; claim this node's share of their live sessions; end those nobody can run."""
        if self.store._lease_lost is not None or self.manager.closing:
            return
        await self.store.mark_lost_nodes()
        orphans = await self.store.orphans()
        if not orphans:
            return
        await self._refresh_nodes()
        up = [r for r in self._nodes.values() if self._status(r) == "up"]
        roots = self.manager.workdirs.roots
        now = trio.current_time()
        for rec in orphans:
            self._orphaned.setdefault(rec.id, now)
        # this node takes what its allow-list admits and its disk has (workDirs are host paths)
        mine = [rec for rec in orphans if admits(roots, rec.workDir) and os.path.isdir(rec.workDir)]
        # no live node's allow-list admits it, or nobody took it for two leases (no host has the directory)
        too_long = 2 * self.store.lease_s
        nobody = [rec for rec in orphans if rec not in mine and (
            not any(admits(list(r["workDirs"]), rec.workDir) for r in up)
            or now - self._orphaned[rec.id] > too_long)]
        self._orphaned = {sid: t for sid, t in self._orphaned.items() if any(r.id == sid for r in orphans)}
        room = max(0, self.config.maxSessions - self.manager.live_here())
        if mine and room and not self.draining:
            # first this node's share (the others take theirs at the same time), then, a moment later, whatever
            # nobody took: no session waits a round for a node that is busy or gone
            takers = sum(1 for r in up if any(admits(list(r["workDirs"]), rec.workDir) for rec in mine)) or 1
            share = min(room, math.ceil(len(mine) / takers))
            taken = await self._take(mine[:share])
            left = [rec for rec in mine if rec.id not in taken]
            room -= len(taken)
            if left and room > 0:
                await trio.sleep(0.3)
                await self._take(left[:room])
        if nobody:
            for rec in await self.store.claim([r.id for r in nobody]):
                await self._end_lost(rec)

    async def _take(self, recs: list[SessionRecord]) -> set[str]:
        """Claim these sessions (those another node claims first are skipped) and resume them here."""
        claimed = await self.store.claim([rec.id for rec in recs])
        for rec in claimed:
            log.warning("cluster.session_adopted", session_id=rec.id, from_node=rec.node, status=rec.status.value)
            self.adopted += 1
            self.manager.adopt(rec)
        return {rec.id for rec in claimed}

    async def _end_lost(self, rec: SessionRecord) -> None:
        previous, lost_node = rec.status, rec.node
        rec.node = self.node_id
        rec.status, rec.endReason, rec.endedAt = State.CRASHED, "node_lost", now_ms()
        rec.crash = CrashInfo(reason=f"node_lost: node {lost_node} was lost and no live node can run a session in "
                                     f"{rec.workDir} (no allow-list admits it, or no host has the directory)")
        rec.pendingPermission, rec.pid = None, None
        await self.store.save_session(rec)
        self.manager.records[rec.id] = rec
        self.bus.publish(rec.id, StatusChanged(status=rec.status, previous=previous, detail="node_lost"))
        self.bus.publish(rec.id, Ended(reason="node_lost", status=rec.status))
        log.error("cluster.session_lost", session_id=rec.id, node=lost_node, work_dir=rec.workDir)
