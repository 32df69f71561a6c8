"""The SessionManager: creates, finds and ends sessions; one runner task per live session, all in the
daemon's root nursery. It is the only place sessions are added or looked up."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import msgspec
import structlog
import trio

from aegisd.acp import Lifeline
from aegisd.acp._cgroup import SessionCgroups
from aegisd.acp._reaper import MARKER, SESSION_MARKER
from aegisd.bus import EventBus
from aegisd.core.config import PERMISSION_MODES, Config
from aegisd.core.errors import (
    AmbiguousId,
    CapacityExceeded,
    QuotaExceeded,
    ResourceExhausted,
    SessionNotFound,
    SessionNotLive,
    Unavailable,
    ValidationError,
)
from aegisd.core.events import Created
from aegisd.core.locks import held
from aegisd.core.models import SessionRecord, now_ms
from aegisd.core.pricing import UsageRecord
from aegisd.core.states import LIVE, TERMINAL, State
from aegisd.sessions._agents import AgentLaunch, resolve_agent
from aegisd.sessions._limits import FDS_PER_SESSION, fd_shortage, is_exhaustion
from aegisd.sessions._workdirs import WorkDirPolicy
from aegisd.sessions.runner import SessionRunner
from aegisd.store import Store, until_stored

log = structlog.get_logger("aegisd.sessions")

NAME_SLUG = 19  # characters of the prompt's slug in a derived name
MIN_PREFIX = 4  # shortest id prefix accepted

__all__ = ["AgentLaunch", "SessionManager"]


class Metering(Protocol):
    """Where each turn's usage goes (the ledger of aegisd/features/metering.py)."""

    def record(self, rec: UsageRecord) -> None: ...


class QuotaCheck(Protocol):
    """The per-key quotas a create or a prompt must pass (aegisd/features/quotas.py)."""

    def check_create(self, key_id: str | None) -> None: ...

    def check_send(self, key_id: str | None) -> None: ...


class SessionManager:
    def __init__(self, *, config: Config, store: Store, bus: EventBus, lifeline: Lifeline,
                 nursery: trio.Nursery | None = None, environ: Mapping[str, str] | None = None,
                 cgroups: SessionCgroups | None = None) -> None:
        self.config = config
        self.cgroups = cgroups
        self.store = store
        self.bus = bus
        self.lifeline = lifeline
        self._nursery = nursery  # where runners run: run()'s, or the one given
        self.environ = dict(os.environ if environ is None else environ)
        self.workdirs = WorkDirPolicy(config)
        self.records: dict[str, SessionRecord] = {}
        self.runners: dict[str, SessionRunner] = {}
        self._create_lock = trio.Lock()
        self.closing = False  # the daemon is stopping: no new session starts
        self._save_locks: dict[str, trio.Lock] = {}
        self.started_at = now_ms()
        self.created_total = 0
        from aegisd.core.metrics import Metrics

        self.metrics = Metrics()
        self.usage: Metering | None = None  # metering, set by the daemon (aegisd/features/metering.py)
        self.quotas: QuotaCheck | None = None  # per-key quotas, set by the daemon (aegisd/features/quotas.py)
        # told when a create is refused for want of fds, processes or memory (the daemon raises an alert)
        self.on_exhausted: Callable[[str], object] | None = None
        self.node_id: str | None = None  # this node's id (aegisd/cluster), recorded in each session it creates

    def mcp_specs(self, rec: SessionRecord) -> list[dict[str, Any]]:
        """The session's MCP servers as ACP `mcpServers` entries (stdio)."""
        out: list[dict[str, Any]] = []
        for name in rec.mcpServers:
            if name == "aegis" and name not in self.config.mcpServers:
                # `ag mcp` talking to this daemon over its control socket
                out.append({"name": "aegis", "command": sys.executable, "args": ["-m", "aegisctl", "mcp"],
                            "env": [{"name": "AEGIS_SOCKET", "value": str(self.config.socket_path)}]})
                continue
            spec = self.config.mcpServers.get(name)
            if spec is None:  # removed from the config since: the session starts without it
                log.warning("session.mcp_server_unknown", session_id=rec.id, server=name)
                continue
            out.append({"name": name, "command": spec.command, "args": list(spec.args),
                        "env": [{"name": k, "value": v} for k, v in spec.env.items()]})
        return out

    def markers(self, session_id: str) -> dict[str, str]:
        return {MARKER: self.lifeline.token, SESSION_MARKER: session_id}

    async def save(self, rec: SessionRecord, *, durable: bool = True) -> None:
        """Persist a record. Serialized per session, and the record is encoded inside the lock, so the last
        save to land always holds the latest state. ``durable=False``: in the kernel (survives a kill -9) when
        this returns, durable at the next store flush (the runner's state changes: published at once, flushed
        before any command is answered)."""
        lock = self._save_locks.get(rec.id)
        if lock is None:
            lock = self._save_locks[rec.id] = trio.Lock()
        async with held(lock):
            for delay in (0.05, 0.2, 0.5, 1.0, 2.0, None):
                try:
                    await self.store.save_session(rec)
                    break
                except OSError as exc:  # out of fds for a moment (a burst of clients)? try again, briefly
                    if delay is None or not is_exhaustion(exc):
                        raise
                    log.warning("session.save_retry", session_id=rec.id, error=str(exc), retry_in=delay)
                    await trio.sleep(delay)
        if durable:
            await self.store.flush()

    def _exhausted(self, exc: ResourceExhausted) -> ResourceExhausted:
        log.error("session.create_refused", code=exc.code, reason=exc.message)
        if self.on_exhausted is not None:
            self.on_exhausted(exc.message)
        return exc

    # ---- lookup --------------------------------------------------------------------------------
    def resolve_id(self, ident: str, *, among: Callable[[str], bool] | None = None) -> str:
        """A full id, or a unique prefix (4+ characters) of one; ``among`` limits the sessions a prefix may
        name (the caller's own)."""
        if ident in self.records and (among is None or among(ident)):
            return ident
        if len(ident) < MIN_PREFIX:
            raise ValidationError(f"session id prefix {ident!r} is too short: give at least {MIN_PREFIX} characters "
                                  "(`ag list` shows the ids)")
        if len(ident) >= MIN_PREFIX:
            matches = [sid for sid in self.records if sid.startswith(ident) and (among is None or among(sid))]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousId(f"session id prefix {ident!r} matches {len(matches)} sessions")
        raise SessionNotFound(f"session {ident} not found")

    def _name_for(self, prompt: str | None) -> str | None:
        """`cc-<slug of the first prompt>` (as the original named them: "cc-analyze-this-projec"), unique among
        this daemon's sessions."""
        if not prompt:
            return None
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:NAME_SLUG].strip("-") or "session"
        base = f"cc-{slug}"
        taken = {r.name for r in self.records.values()}
        if base not in taken:
            return base
        return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)

    def get(self, ident: str) -> SessionRecord:
        return self.records[self.resolve_id(ident)]

    def runner(self, ident: str) -> SessionRunner:
        sid = self.resolve_id(ident)
        runner = self.runners.get(sid)
        if runner is None:
            rec = self.records[sid]
            raise SessionNotLive(f"session {sid} is {rec.status.value}")
        return runner

    def list(self, states: frozenset[State] | None = None) -> list[SessionRecord]:
        recs = [r for r in self.records.values() if states is None or r.status in states]
        recs.sort(key=lambda r: r.createdAt, reverse=True)
        return recs

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {s.value: 0 for s in State}
        for rec in self.records.values():
            out[rec.status.value] += 1
        return out

    # ---- lifecycle -----------------------------------------------------------------------------
    def _host(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the session manager is not running (start SessionManager.run first)")
        return self._nursery

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the sessions: recover the stored ones (resuming the live), then run their runners until
        cancelled — after shutdown() has stopped them."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.recover()
            task_status.started()
            await trio.sleep_forever()

    def mine(self, rec: SessionRecord) -> bool:
        """Whether this daemon runs the session: always, unless the store is shared by a cluster (then: whether
        this node owns it)."""
        owns = getattr(self.store, "owns", None)
        return True if owns is None else bool(owns(rec.id))

    def live_here(self) -> int:
        return sum(1 for r in self.records.values() if r.status in LIVE and r.node in (None, self.node_id))

    async def recover(self) -> None:
        """At daemon start: list every stored session again; resume the live ones this daemon runs (in a cluster,
        the others are other nodes')."""
        shared = getattr(self.store, "owns", None) is not None
        for rec in await self.store.load_sessions():
            if not shared:
                rec.node = self.node_id
            self.records[rec.id] = rec
            if rec.status in LIVE and self.mine(rec):
                launch = self._launch_for(rec)
                if launch is None:
                    continue
                self._start_runner(rec, launch, resume=True)
        log.info("sessions.recovered", total=len(self.records), resumed=len(self.runners))

    def adopt(self, rec: SessionRecord, *, why: str = "node_lost") -> None:
        """Run a session this node took over (a lost node's, or its own again after its lease came back): resumed
        with ACP session/load like after a restart; its pending permissions and queued prompts come with it."""
        if rec.id in self.runners:
            return
        lost, rec.node = rec.node, self.node_id
        self.records[rec.id] = rec
        if rec.status in LIVE and not self.closing:
            launch = self._launch_for(rec)
            if launch is not None:
                runner = self._start_runner(rec, launch, resume=True)
                runner.resume_reason = f"{why}: node {lost}" if lost and lost != self.node_id else why

    def remote(self, rec: SessionRecord) -> None:
        """Another node's session changed (or is new): keep its record current here (no agent runs here)."""
        if rec.id in self.runners:
            return
        self.records[rec.id] = rec

    def _launch_for(self, rec: SessionRecord) -> AgentLaunch | None:
        try:
            return resolve_agent(self.config, rec.agent)
        except ValidationError as exc:
            from aegisd.core.models import CrashInfo

            rec.status, rec.endReason, rec.endedAt = State.CRASHED, "daemon_restart", now_ms()
            rec.crash = CrashInfo(reason=f"daemon_restart: {exc.message}")
            self._host().start_soon(partial(until_stored, self.store.health, partial(self.store.save_session, rec),
                                            what=f"session {rec.id}: record"))
            return None

    def _start_runner(self, rec: SessionRecord, launch: AgentLaunch, *, resume: bool) -> SessionRunner:
        runner = SessionRunner(self, rec, launch, resume=resume)
        self.runners[rec.id] = runner
        self._host().start_soon(self._run, runner)
        return runner

    async def _run(self, runner: SessionRunner) -> None:
        try:
            await runner.run()
        except Exception:  # e.g. out of fds while saving its end: this session's trouble, never the daemon's
            log.exception("session.runner_failed", session_id=runner.rec.id)
        finally:
            if self.runners.get(runner.rec.id) is runner:
                del self.runners[runner.rec.id]

    async def create(self, *, workDir: str, name: str | None = None, prompt: str | None = None,
                     permissionMode: str | None = None, model: str | None = None, agent: str | None = None,
                     stallThresholdMs: int | None = None, parentId: str | None = None,
                     ownerKeyId: str | None = None, reuse: bool = True, wait_ready: float | None = None,
                     forkedFrom: str | None = None, mcpServers: Sequence[str] | None = None,
                     creatorSessionId: str | None = None) -> tuple[SessionRecord, bool, dict[str, Any]]:
        """Create a session (or reuse an idle one in the same workDir). Returns (record, reused, delivery).
        Waits until the agent is ready (or failed) so the caller learns the outcome."""
        cfg = self.config
        real = self.workdirs.validate(workDir)
        mode = permissionMode or cfg.defaultPermissionMode
        if mode not in PERMISSION_MODES:
            raise ValidationError(f"permissionMode must be one of {', '.join(PERMISSION_MODES)}")
        launch = resolve_agent(cfg, agent)
        for server in mcpServers or ():
            if server != "aegis" and server not in cfg.mcpServers:
                known = ", ".join(sorted({"aegis", *cfg.mcpServers}))
                raise ValidationError(f"unknown MCP server {server!r}; the config offers: {known}")
        if stallThresholdMs is not None and not (1000 <= stallThresholdMs <= 3_600_000):
            raise ValidationError("stallThresholdMs must be between 1000 and 3600000")
        async with self._create_lock:
            if reuse:
                for rec in self.list(frozenset({State.IDLE})):
                    runner = self.runners.get(rec.id)
                    if (rec.workDir == real and runner is not None and runner.queue_length == 0
                            and rec.agent == launch.name and rec.ownerKeyId == ownerKeyId
                            and rec.creatorSessionId == creatorSessionId
                            and model in (None, rec.model, rec.requestedModel)
                            and rec.mcpServers == list(dict.fromkeys(mcpServers or ()))):
                        # afterEventId: the events of this session after it are the new prompt's (a client
                        # follows only its own turn, e.g. `ag run --reuse`)
                        delivery: dict[str, Any] = {"delivered": False, "attempts": 0,
                                                    "afterEventId": self.bus.last_id}
                        if prompt:
                            if self.quotas is not None:
                                self.quotas.check_send(ownerKeyId)
                            res = await runner.command("send", text=prompt)
                            delivery.update(delivered=res["delivered"], attempts=res["attempts"],
                                            queued=res["queued"])
                        return rec, True, delivery
            if self.quotas is not None:
                self.quotas.check_create(ownerKeyId)
                if prompt:
                    self.quotas.check_send(ownerKeyId)
            if self.closing:
                raise Unavailable("the daemon is shutting down")
            live = self.live_here()  # maxSessions is per node
            if live >= cfg.maxSessions:
                raise CapacityExceeded(f"maxSessions ({cfg.maxSessions}) live sessions reached")
            if creatorSessionId is not None:
                children = sum(1 for r in self.records.values()
                               if r.status in LIVE and r.creatorSessionId == creatorSessionId)
                if children >= cfg.maxChildSessions:
                    raise QuotaExceeded(f"session {creatorSessionId} already has {children} live sessions it "
                                        f"created (maxChildSessions {cfg.maxChildSessions}); end one first",
                                        details={"quota": "maxChildSessions", "limit": cfg.maxChildSessions,
                                                 "usage": children})
            shortage = fd_shortage(live)
            if shortage is not None:
                used, limit = shortage
                raise self._exhausted(ResourceExhausted(
                    f"too many open files: {used} of the daemon's limit of {limit} are open and a session needs "
                    f"{FDS_PER_SESSION}; end sessions or raise the limit (LimitNOFILE, see `ag doctor`)",
                    details={"resource": "nofile", "open": used, "limit": limit, "retryAfter": 5}))
            sid = str(uuid.uuid4())
            ts = now_ms()
            rec = SessionRecord(
                id=sid, workDir=real, name=name or self._name_for(prompt) or f"session-{sid[:8]}", agent=launch.name,
                permissionMode=mode, model=model, requestedModel=model,
                stallThresholdMs=stallThresholdMs or cfg.stallThresholdMs, createdAt=ts, lastActivity=ts,
                parentId=parentId, ownerKeyId=ownerKeyId, forkedFrom=forkedFrom, creatorSessionId=creatorSessionId,
                mcpServers=list(dict.fromkeys(mcpServers or ())), node=self.node_id)
            try:
                await self.store.save_session(rec)
            except (OSError, MemoryError) as exc:
                if not is_exhaustion(exc):
                    raise
                raise self._exhausted(ResourceExhausted(
                    f"cannot save the new session: {getattr(exc, 'strerror', None) or exc}",
                    details={"resource": "store", "retryAfter": 5})) from None
            await self.store.flush()  # durable before anyone hears of it
            self.records[sid] = rec
            self.created_total += 1
            runner = self._start_runner(rec, launch, resume=False)
        self.bus.publish(sid, Created(record=msgspec.structs.replace(rec)))  # as it was when created
        delivery = {"delivered": False, "attempts": 0}
        if prompt:
            # queued now, sent by the runner as soon as the agent is ready
            try:
                res = await runner.command("send", text=prompt)
                delivery = {"delivered": res["delivered"], "attempts": res["attempts"], "queued": res["queued"]}
            except SessionNotLive:
                pass  # the agent failed to start (not installed…): the crashed record says why, as without a prompt
        timeout = wait_ready if wait_ready is not None else cfg.acpInitTimeoutMs / 1000 * 3
        with trio.move_on_after(timeout):
            await runner.ready.wait()
        if runner.start_error is not None:  # it could not start as asked (an unknown model, no fds): say why
            if isinstance(runner.start_error, ResourceExhausted):
                raise self._exhausted(runner.start_error)
            raise runner.start_error
        if prompt and runner.delivered_prompts > 0:
            delivery = {"delivered": True, "attempts": 1, "queued": False}
        return rec, False, delivery

    async def command(self, ident: str, kind: str, **args: Any) -> Any:
        runner = self.runner(ident)
        if kind == "send" and self.quotas is not None:
            self.quotas.check_send(runner.rec.ownerKeyId)
        return await runner.command(kind, **args)

    def live_owned_by(self, key_id: str) -> int:
        return sum(1 for r in self.records.values() if r.status in LIVE and r.ownerKeyId == key_id)

    async def end(self, ident: str, status: State) -> SessionRecord:
        sid = self.resolve_id(ident)
        rec = self.records[sid]
        runner = self.runners.get(sid)
        if runner is None or rec.status in TERMINAL:  # a killed session's agent may still be stopping
            if rec.status in TERMINAL:
                raise SessionNotLive(f"session {sid} already {rec.status.value}")
            raise SessionNotLive(f"session {sid} has no running agent")
        self.store.health.check()  # the end could not be stored now: 503 STORE_UNAVAILABLE, the session lives on
        await runner.stop(status, "killed" if status == State.KILLED else "closed")
        return rec

    def fence(self, session_id: str | None, reason: str) -> None:
        """This node may no longer write for ``session_id`` (None: for any session: its lease is lost): stop those
        agents at once, write nothing more for them (aegisd/cluster, and the Redis store's lock)."""
        runners = list(self.runners.values()) if session_id is None else \
            [r for r in (self.runners.get(session_id),) if r is not None]
        for runner in runners:
            runner.fence(reason)
        if runners:
            log.error("sessions.fenced", sessions=len(runners), reason=reason,
                      session_id=session_id)

    async def shutdown(self) -> None:
        """Stop every agent, keeping session states for the next daemon to resume. No session starts once this
        began (a pipeline starting a stage, a create in flight): each is refused, and any that slipped in is
        stopped too."""
        self.closing = True
        with trio.CancelScope(shield=True):
            while self.runners:
                runners = list(self.runners.values())
                for runner in runners:
                    runner.end(None, "daemon_shutdown")
                for runner in runners:
                    await runner.finished.wait()
