"""One session: ONE owner task with ONE inbox, driving the pure session state machine (aegisd/core/machine.py).

Everything that happens to the session arrives in the inbox, in order: commands from operations and the
manager (send, approve, reject, interrupt, set_*: :meth:`SessionRunner.command`), the agent's updates,
activity and permission requests (from the ACP connection's reader, :class:`AcpConnection` callbacks), the end
of a prompt turn (from the task awaiting its answer), and the agent being ready (from the start task). The owner
feeds each to the machine and carries out the effects it returns (transcript, events, record, ACP messages);
ticks of the clock come from the owner's own wait for the machine's next deadline. Only the owner changes the
session. The other tasks of the session's nursery are adapters for I/O: the ACP reader, the stderr pump, the
process watch, the start, and the wait for each turn's answer.

The end (kill, close, crash, daemon shutdown) is requested with :meth:`SessionRunner.end`, which cancels the
nursery wherever the owner waits, and is carried out in one place, :meth:`SessionRunner._finish`."""

from __future__ import annotations

import itertools
import math
import signal
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec
import structlog
import trio

import aegisd.sessions.failures as failures
from aegisd import __version__
from aegisd.acp import AcpConnection, AgentProcess, Lifeline, RemoteError, agent_environment, spawn_agent
from aegisd.acp._cgroup import SessionCgroups
from aegisd.bus import EventBus
from aegisd.core import events as ev
from aegisd.core import machine as m
from aegisd.core import wire as w
from aegisd.core.config import Config
from aegisd.core.errors import (
    AegisError,
    AgentError,
    InvalidModel,
    ProtocolError,
    RequestTimeout,
    ResourceExhausted,
    SessionFenced,
    SessionNotLive,
    StoreUnavailable,
)
from aegisd.core.metrics import Histogram, Metrics
from aegisd.core.models import CrashInfo, LastError, PendingPermission, SessionRecord, TokenUsage, now_ms
from aegisd.core.pricing import UsageRecord, estimate_cost
from aegisd.core.states import LIVE, State
from aegisd.sessions._agents import AgentLaunch
from aegisd.sessions._limits import is_exhaustion
from aegisd.store import Store, until_stored

log = structlog.get_logger("aegisd.session")


class UsageLedger(Protocol):
    def record(self, rec: UsageRecord) -> None: ...


class RunnerHost(Protocol):
    """What a runner needs from whoever hosts it (the session manager), and nothing more."""

    @property
    def config(self) -> Config: ...
    @property
    def bus(self) -> EventBus: ...
    @property
    def store(self) -> Store: ...
    @property
    def environ(self) -> dict[str, str]: ...
    @property
    def lifeline(self) -> Lifeline: ...
    @property
    def cgroups(self) -> SessionCgroups | None: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def usage(self) -> UsageLedger | None: ...
    @property
    def records(self) -> Mapping[str, SessionRecord]: ...

    def markers(self, session_id: str) -> dict[str, str]: ...

    def mcp_specs(self, rec: SessionRecord) -> list[dict[str, Any]]: ...

    async def save(self, rec: SessionRecord, *, durable: bool = True) -> None: ...


# ---- the inbox ---------------------------------------------------------------------------------------
class _Command:
    __slots__ = ("args", "done", "error", "kind", "result")

    def __init__(self, kind: str, args: dict[str, Any]) -> None:
        self.kind = kind
        self.args = args
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _Reply:
    """The answer to one of the agent's permission requests, awaited by the connection's request task."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: dict[str, Any] = {"outcome": "cancelled"}


class _Ask(msgspec.Struct):
    key: int
    params: w.RequestPermissionParams


class _Update(msgspec.Struct):
    update: Any  # w.SessionUpdate | w.UnknownUpdate
    replay: bool


class _Activity(msgspec.Struct):
    pass


class _Ready(msgspec.Struct):
    pass


class _TurnDone(msgspec.Struct):
    stop: str
    usage: dict[str, Any] | None
    error: LastError | None = None


_Input = _Command | _Ask | _Update | _Activity | _Ready | _TurnDone


class _ModelChoice:
    """How the agent lets a client choose its model, and what it offers: a `model` config option (stable ACP;
    claude-agent-acp 0.101), else the unstable `models` field with session/set_model, else nothing."""

    def __init__(self, values: list[str] | None = None, names: dict[str, str] | None = None,
                 current: str | None = None, config_id: str | None = None) -> None:
        self.values = values or []
        self.names = names or {}
        self.current = current
        self.config_id = config_id

    @classmethod
    def of(cls, config_options: Any, models: Any) -> _ModelChoice:
        for opt in config_options if isinstance(config_options, list) else []:
            if isinstance(opt, dict) and (opt.get("category") == "model" or opt.get("id") == "model") \
                    and opt.get("type", "select") == "select" and isinstance(opt.get("options"), list):
                flat = [o for o in opt["options"] if isinstance(o, dict) and isinstance(o.get("value"), str)]
                for group in opt["options"]:  # grouped selects: {group, name, options: [...]}
                    if isinstance(group, dict) and isinstance(group.get("options"), list):
                        flat += [o for o in group["options"] if isinstance(o, dict) and isinstance(o.get("value"), str)]
                return cls([o["value"] for o in flat], {o["value"]: str(o.get("name") or "") for o in flat},
                           opt.get("currentValue") if isinstance(opt.get("currentValue"), str) else None,
                           str(opt.get("id")))
        if isinstance(models, dict) and isinstance(models.get("availableModels"), list):
            avail = [m for m in models["availableModels"] if isinstance(m, dict) and isinstance(m.get("modelId"), str)]
            current = models.get("currentModelId")
            return cls([m["modelId"] for m in avail], {m["modelId"]: str(m.get("name") or "") for m in avail},
                       current if isinstance(current, str) else None)
        return cls()

    def match(self, wanted: str) -> str | None:
        if wanted in self.values:
            return wanted
        low = wanted.strip().lower()
        for value in self.values:
            if low in (value.lower(), self.names.get(value, "").lower()):
                return value
        return None

    def report(self, rec: SessionRecord) -> None:
        rec.models = list(self.values)
        if self.current is not None:
            rec.model = self.current


class SessionRunner:
    def __init__(self, host: RunnerHost, record: SessionRecord, launch: AgentLaunch, *,
                 resume: bool = False) -> None:
        self.host = host
        self.rec = record
        self.launch = launch
        self.resume = resume
        self.log = log.bind(session_id=record.id)
        self._cfg = host.config
        self._bus = host.bus
        self._store = host.store
        self._proc: AgentProcess | None = None
        self._conn: AcpConnection | None = None
        self.machine = m.SessionMachine(record, now=trio.current_time(),
                                        prompt_timeout_s=self._cfg.acpPromptTimeoutMs / 1000,
                                        idle_timeout_s=self._cfg.idleTimeoutMs / 1000)
        self._inbox_send, self._inbox = trio.open_memory_channel[_Input](math.inf)
        self._replies: dict[int, _Reply] = {}
        self._asks = itertools.count(1)
        self._loading = False
        self._nursery: trio.Nursery | None = None
        self._end_request: tuple[State | None, str, CrashInfo | None] | None = None
        self._models = _ModelChoice()
        self._cost_seen = 0.0  # the agent's cumulative cost report at the end of the last turn
        self.start_error: AegisError | None = None  # why the session could not start as asked (create says so)
        self.ready = trio.Event()  # idle for the first time, or ended
        self.settled = trio.Event()  # the final state is saved (a kill's agent may still be stopping)
        self._settle_error: BaseException | None = None
        self.finished = trio.Event()  # ... and the agent is gone
        self.fenced: str | None = None  # why this node may no longer write for the session (aegisd/cluster)
        self.resume_reason = "daemon_restart"  # resume: why the agent is started again (node_lost: adopted)

    # ---- public, called from other tasks -------------------------------------------------------
    async def command(self, kind: str, **args: Any) -> Any:
        """Put a command in the session's inbox and wait for the owner's answer."""
        if self.finished.is_set() or self._end_request is not None:
            raise SessionNotLive(f"session {self.rec.id} is ending" if not self.finished.is_set()
                                 else f"session {self.rec.id} is {self.rec.status.value}")
        self._store.health.check()  # the store is down: 503 STORE_UNAVAILABLE now, nothing done
        cmd = _Command(kind, args)
        try:
            self._inbox_send.send_nowait(cmd)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            raise SessionNotLive(f"session {self.rec.id} is not accepting commands") from None
        await cmd.done.wait()
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    def end(self, status: State | None, reason: str, crash: CrashInfo | None = None) -> None:
        """Ask the session to end. ``status=None`` means daemon shutdown: stop the agent but keep the
        session's state, so the next daemon resumes it."""
        if self._end_request is None:
            self._end_request = (status, reason, crash)
            self.log.info("session.ending", status=status.value if status else None, reason=reason)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        elif crash is not None and self._end_request[2] is not None:
            old = self._end_request[2]  # fill in what the first report did not know
            if old.exitCode is None and crash.exitCode is not None:
                old.exitCode = crash.exitCode
            if old.signal is None and crash.signal is not None:
                old.signal = crash.signal

    def fence(self, reason: str) -> None:
        """This node lost the session (its lease, or another node took it over): stop the agent at once and write
        nothing more for it; the session's state is the new owner's."""
        if self.fenced is None:
            self.fenced = reason
            self.log.warning("session.fenced", reason=reason)
        self._end_request = None
        self.end(None, "fenced")

    async def stop(self, status: State | None, reason: str) -> None:
        """End the session and wait until its final state is saved (for a kill, the agent may still be
        stopping: :attr:`finished` says when it is gone)."""
        self.end(status, reason)
        await self.settled.wait()
        if self._settle_error is not None:  # not acknowledged: it is not stored
            exc = self._settle_error
            message = f"session {self.rec.id} ended, but its end could not be saved: {exc!r}"
            raise ResourceExhausted(message, details={"resource": "store", "retryAfter": 5}) \
                if is_exhaustion(exc) else AegisError(message)

    # ---- the owner task ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._end_request is not None:
                    nursery.cancel_scope.cancel()
                if self.resume:
                    await self._recover()
                    await self._apply(self.machine.resuming())
                nursery.start_soon(self._start)
                await self._own()
        except Exception as exc:  # a bug here must end this session only, never the daemon
            self.log.exception("session.internal_error")
            self.end(State.CRASHED, "internal_error", CrashInfo(reason=f"internal_error: {exc!r}"))
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _own(self) -> None:
        """The owner's loop: one input at a time from the inbox, and a tick whenever the machine's deadline
        passes (stall, prompt timeout, idle timeout)."""
        machine = self.machine
        while True:
            deadline = machine.deadline(trio.current_time())
            item: _Input | None = None
            with trio.move_on_at(deadline):
                item = await self._inbox.receive()  # cancel-safe: a channel receive
            if item is not None:
                await self._take(item)
            if trio.current_time() >= deadline:
                await self._apply(machine.tick(trio.current_time()))

    async def _take(self, item: _Input) -> None:
        machine, now = self.machine, trio.current_time()
        if isinstance(item, _Activity):
            machine.activity(now)
        elif isinstance(item, _Update):
            if isinstance(item.update, w.ConfigOptionUpdate):
                changed = _ModelChoice.of(item.update.configOptions, None)
                if changed.values:
                    self._models = changed
                    changed.report(self.rec)
            await self._apply(machine.update(item.update, now, replay=item.replay))
        elif isinstance(item, _Ask):
            await self._apply(machine.request_permission(item.key, item.params, now))
        elif isinstance(item, _TurnDone):
            await self._apply(machine.turn_ended(item.stop, item.usage, now, error=item.error))
        elif isinstance(item, _Ready):
            await self._apply(machine.ready(now))
            self.ready.set()
        else:
            await self._run_command(item)

    async def _run_command(self, cmd: _Command) -> None:
        try:
            cmd.result = await self._handle(cmd)
            await self._store.flush()  # acknowledged means durable (saves are flushed in groups)
        except AegisError as exc:
            cmd.error = exc
        except trio.Cancelled:  # the session is ending: the command did not take effect
            cmd.error = SessionNotLive(f"session {self.rec.id} ended before {cmd.kind} took effect")
            raise
        except BaseException:  # a bug: the session ends (see run), and its caller gets a 500
            cmd.error = AegisError(f"internal error in session {self.rec.id} during {cmd.kind}")
            raise
        finally:
            cmd.done.set()

    async def _handle(self, cmd: _Command) -> Any:
        machine, now = self.machine, trio.current_time()
        if cmd.kind == "send":
            result, effects = machine.prompt(cmd.args["text"], now)
            await self._apply(effects)
            return result
        if cmd.kind in ("approve", "reject"):
            result, effects = machine.decide(cmd.kind == "approve", now, option_id=cmd.args.get("optionId"),
                                             request_id=cmd.args.get("requestId"), by=cmd.args.get("by"))
            await self._apply(effects)
            return result
        if cmd.kind == "interrupt":
            result, effects = machine.interrupt(now)
            await self._apply(effects)
            return result
        if cmd.kind == "set_profile":
            self.rec.permissionProfile = cmd.args["profile"]
            self.rec.permissionPolicy = cmd.args.get("legacy")
            await self._save()
            return {"permissionProfile": self.rec.permissionProfile, "permissionPolicy": self.rec.permissionPolicy}
        if cmd.kind == "set_model":
            result = await self._set_model(cmd.args["model"])
            self.rec.requestedModel = cmd.args["model"]
            await self._save()
            return result
        if cmd.kind == "set_permission_mode":
            self.rec.permissionMode = cmd.args["mode"]
            await self._sync_mode()
            await self._save()
            return {"ok": True, "permissionMode": self.rec.permissionMode, "currentMode": self.rec.currentMode,
                    "appliedBy": "agent" if machine.native_mode else "daemon"}
        raise AegisError(f"unknown session command {cmd.kind!r}")

    # ---- effects -------------------------------------------------------------------------------
    async def _apply(self, effects: list[m.Effect]) -> None:
        """Carry out the machine's effects, in order."""
        for effect in effects:
            if isinstance(effect, m.Append):
                await self._append(effect.entries)
            elif isinstance(effect, m.Publish):
                self._bus.publish(self.rec.id, effect.event)
                if isinstance(effect.event, ev.StatusChanged):
                    self.log.info("session.status", status=effect.event.status.value,
                                  previous=effect.event.previous.value, detail=effect.event.detail)
            elif isinstance(effect, m.SetStatus):
                self.rec.status = effect.status
                self.rec.lastActivity = now_ms()
                self.rec.pendingPermission = self.machine.head
            elif isinstance(effect, m.Save):
                await self._save()
            elif isinstance(effect, m.Flush):
                await self._durably(self._store.flush, "flush")
            elif isinstance(effect, m.Answer):
                reply = self._replies.pop(effect.key, None)
                if reply is not None:
                    reply.outcome = effect.outcome
                    reply.done.set()
            elif isinstance(effect, m.SendPrompt):
                await self._send_prompt(effect.text)
            elif isinstance(effect, m.CancelTurn):
                await self._cancel_turn(strict=effect.strict)
            elif isinstance(effect, m.RecordUsage):
                self._add_usage(effect.usage)
            elif isinstance(effect, m.EndSession):
                self.end(effect.status, effect.reason, effect.crash)
            elif isinstance(effect, m.Count):
                metric = getattr(self.host.metrics, effect.metric)
                if isinstance(metric, Histogram):
                    metric.observe(effect.value or 0.0)
                else:
                    setattr(self.host.metrics, effect.metric, metric + 1)
            elif isinstance(effect, m.Log):
                self.log.warning(effect.event, **effect.fields)
        self.rec.pendingPermission = self.machine.head  # the record shows the machine's queue, never its own

    async def _send_prompt(self, text: str) -> None:
        rec, conn = self.rec, self._conn
        assert conn is not None and rec.acpSessionId is not None
        try:
            req = await conn.send_request("session/prompt", {"sessionId": rec.acpSessionId,
                                                             "prompt": [{"type": "text", "text": text}]})
        except AgentError:
            return  # the agent died or broke the protocol: the session is ending
        assert self._nursery is not None
        self._nursery.start_soon(self._await_turn, conn, req)
        await self._apply(self.machine.prompt_sent(trio.current_time()))

    async def _await_turn(self, conn: AcpConnection, req: int) -> None:
        """The adapter that waits for session/prompt's answer and puts it in the inbox."""
        rec = self.rec
        try:
            result = conn.decode_result("session/prompt", await conn.wait(req), w.PromptResult)
            done = _TurnDone(result.stopReason, result.usage)
        except RemoteError as exc:
            done = _TurnDone("error", None, failures.from_prompt_error(exc.rpc_code, exc.rpc_message, exc.rpc_data,
                                                                       agent=rec.agent))
        except AgentError:
            return  # the agent died or broke the protocol: the session is ending
        self._inbox_send.send_nowait(done)

    async def _cancel_turn(self, *, strict: bool) -> None:
        assert self._conn is not None and self.rec.acpSessionId is not None
        try:
            await self._conn.cancel(self.rec.acpSessionId)
        except AgentError:  # its stdin is closed: the agent is exiting, and the session with it
            if strict:
                raise SessionNotLive(f"session {self.rec.id} is ending: its agent is gone") from None

    # ---- start -------------------------------------------------------------------------------
    async def _start(self) -> None:
        """The start adapter (a task of its own, so that commands are taken meanwhile): spawn the agent, then
        initialize, new/fork/load, model and mode; the owner hears ``_Ready`` when the agent can take prompts."""
        rec, cfg = self.rec, self._cfg
        env = agent_environment(self.host.environ, extra=self.launch.env, pass_env=self.launch.pass_env,
                                markers=self.host.markers(rec.id))
        try:
            self._proc = await spawn_agent(self.launch.command, cwd=rec.workDir, env=env, session_id=rec.id,
                                           token=self.host.lifeline.token, stderr_limit=cfg.stderrTailBytes,
                                           cgroups=self.host.cgroups)
        except (OSError, MemoryError, RuntimeError) as exc:
            if is_exhaustion(exc):  # out of fds, processes or memory: this create answers 503 (manager.create)
                said = f"cannot start {self.launch.command[0]!r}: {getattr(exc, 'strerror', None) or exc}"
                self.start_error = ResourceExhausted(f"{said}; the daemon is at a resource ceiling, try again "
                                                     "later", details={"resource": "spawn", "retryAfter": 5})
                self.end(State.CRASHED, "resource_exhausted", CrashInfo(reason=f"resource_exhausted: {said}"))
                return
            if not isinstance(exc, OSError):
                raise
            said = f"cannot start {self.launch.command[0]!r}: {exc.strerror or exc}"
            rec.lastError = failures.explain(failures.AGENT_MISSING, said, agent=rec.agent)
            self.end(State.CRASHED, "agent_spawn_failed", CrashInfo(reason=f"agent_spawn_failed: {said}"))
            return
        proc = self._proc
        await self.host.lifeline.register(proc.pgid)
        rec.pid = proc.pid
        assert self._nursery is not None
        self._nursery.start_soon(proc.pump_stderr)
        assert proc.proc.stdin is not None and proc.proc.stdout is not None
        self._conn = conn = AcpConnection(proc.proc.stdin, proc.proc.stdout, self,
                                          max_line_bytes=cfg.maxLineBytes, label=rec.agent)
        await self._nursery.start(self._run_connection)
        self._nursery.start_soon(self._watch_process)
        init_timeout = cfg.acpInitTimeoutMs / 1000
        try:
            init = await conn.initialize(client_name="aegisd", client_version=__version__, timeout=init_timeout)
            info = init.agentInfo
            rec.agentInfo = msgspec.to_builtins(info) if info else None
            rec.loadSupported = init.agentCapabilities.loadSession
            rec.forkSupported = "fork" in init.agentCapabilities.sessionCapabilities
            # a session the last daemon left before the agent gave it an ACP session (killed during its start)
            # has nothing to load: it starts afresh (session/new), and its queued prompts follow
            if self.resume and rec.acpSessionId:
                if not init.agentCapabilities.loadSession:
                    self.end(State.CRASHED, "daemon_restart", CrashInfo(
                        reason="daemon_restart: the agent cannot load sessions (no loadSession capability), "
                               "so the session could not be resumed"))
                    return
                self._loading = True
                try:
                    loaded = await conn.load_session(rec.acpSessionId, rec.workDir, timeout=init_timeout * 2,
                                                     mcp_servers=self.host.mcp_specs(rec))
                finally:
                    self._loading = False
                modes = loaded.modes
                self._models = _ModelChoice.of(loaded.configOptions, loaded.models)
                self._models.report(rec)
            else:
                new = await self._new_or_fork(conn, init, init_timeout * 2)
                rec.acpSessionId = new.sessionId
                modes = new.modes
                self._models = _ModelChoice.of(new.configOptions, new.models)
                try:
                    await self._set_model(rec.requestedModel)
                except InvalidModel as exc:
                    self.start_error = exc
                    rec.lastError = failures.explain(failures.MODEL, exc.message, agent=rec.agent)
                    self.end(State.CRASHED, "model_unavailable", CrashInfo(reason=f"model_unavailable: {exc.message}"))
                    return
            await self._apply_mode(modes)
        except RequestTimeout as exc:
            self.end(State.CRASHED, "acp_start_timeout", CrashInfo(reason=f"acp_start_timeout: {exc.message}"))
            return
        except RemoteError as exc:
            self.end(State.CRASHED, "acp_start_failed", CrashInfo(reason=f"acp_start_failed: {exc.message}"))
            return
        except AgentError as exc:
            self.end(State.CRASHED, "agent_exited", CrashInfo(reason=f"agent_exited during start: {exc.message}"))
            return
        self._inbox_send.send_nowait(_Ready())

    async def _new_or_fork(self, conn: AcpConnection, init: w.InitializeResult, timeout: float) -> w.NewSessionResult:
        """`session/new`, or for a fork whose source the agent can fork, `session/fork` of the source's ACP
        session. A fork the agent refuses falls back to a new session (the caller then seeds it with the
        source's transcript)."""
        rec = self.rec
        mcp = self.host.mcp_specs(rec)
        if rec.forkedFrom is None or rec.forkMethod is not None:
            return await conn.new_session(rec.workDir, timeout=timeout, mcp_servers=mcp)
        src = self.host.records.get(rec.forkedFrom)
        rec.forkMethod = "transcript"
        if src is not None and src.acpSessionId and src.agent == rec.agent and rec.forkSupported:
            try:
                forked = await conn.fork_session(src.acpSessionId, rec.workDir, timeout=timeout, mcp_servers=mcp)
            except RemoteError as exc:
                self.log.warning("session.fork_refused", source=src.id, error=exc.message)
            else:
                rec.forkMethod = "acp"
                return forked
        return await conn.new_session(rec.workDir, timeout=timeout, mcp_servers=mcp)

    async def _apply_mode(self, modes: w.SessionModeState | None) -> None:
        rec = self.rec
        if modes is None:
            rec.agentModes, self.machine.native_mode = [], False
            return
        rec.agentModes = [m.id for m in modes.availableModes]
        rec.currentMode = modes.currentModeId
        await self._sync_mode()

    async def _sync_mode(self) -> None:
        """Put the agent in the session's permission mode when it offers that mode (then the agent applies it);
        otherwise the daemon applies it (see _permissions.daemon_policy)."""
        rec = self.rec
        want = rec.permissionMode
        if want in rec.agentModes:
            if rec.currentMode != want:
                assert self._conn is not None and rec.acpSessionId is not None
                try:
                    await self._conn.set_mode(rec.acpSessionId, want, timeout=self._cfg.acpRequestTimeoutMs / 1000)
                    rec.currentMode = want
                except RemoteError as exc:
                    self.log.warning("session.set_mode_failed", mode=want, error=exc.message)
                    self.machine.native_mode = False
                    return
            self.machine.native_mode = True
        else:
            # the agent cannot apply it: the daemon does (see _permissions.daemon_policy). An agent in another
            # mode of its own (claude-agent-acp 0.101 starts in "auto"; or the session's previous mode, such as
            # bypassPermissions) is put back in "default" so requests reach the daemon's policy instead of
            # being decided silently.
            self.machine.native_mode = False
            if rec.currentMode not in ("default", want) and "default" in rec.agentModes:
                assert self._conn is not None and rec.acpSessionId is not None
                try:
                    await self._conn.set_mode(rec.acpSessionId, "default",
                                              timeout=self._cfg.acpRequestTimeoutMs / 1000)
                    rec.currentMode = "default"
                except RemoteError as exc:
                    self.log.warning("session.set_mode_failed", mode="default", error=exc.message)

    async def _set_model(self, wanted: str | None) -> dict[str, Any]:
        """Choose the model through whatever the agent offers (a `model` config option, or session/set_model);
        the record then shows what the agent reports. InvalidModel when it offers no choice or not that one."""
        rec, choice = self.rec, self._models
        if wanted is None:
            choice.report(rec)
            return {"ok": True, "model": rec.model, "models": rec.models}
        if not choice.values:
            raise InvalidModel(f"the agent {rec.agent!r} offers no way to choose a model; leave the model out",
                               details={"models": []})
        value = choice.match(wanted)
        if value is None:
            raise InvalidModel(f"the agent {rec.agent!r} has no model {wanted!r}; it offers: "
                               f"{', '.join(choice.values)}", details={"models": choice.values})
        if value != choice.current:
            assert self._conn is not None and rec.acpSessionId is not None
            timeout = self._cfg.acpRequestTimeoutMs / 1000
            try:
                if choice.config_id is not None:
                    res = await self._conn.request("session/set_config_option", {
                        "sessionId": rec.acpSessionId, "configId": choice.config_id, "value": value},
                        timeout=timeout)
                    updated = _ModelChoice.of(res.get("configOptions") if isinstance(res, dict) else None, None)
                    choice.current = updated.current if updated.values else value
                else:
                    await self._conn.request("session/set_model", {"sessionId": rec.acpSessionId, "modelId": value},
                                             timeout=timeout)
                    choice.current = value
            except RemoteError as exc:
                raise InvalidModel(f"the agent refused model {value!r}: {exc.rpc_message}",
                                   details={"models": choice.values}) from None
        choice.report(rec)
        return {"ok": True, "model": rec.model, "models": rec.models}

    async def _run_connection(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._conn is not None
        try:
            await self._conn.run(task_status=task_status)
        except ProtocolError as exc:
            self.end(State.CRASHED, "acp_protocol_error", CrashInfo(reason=f"acp_protocol_error: {exc.message}"))
            return
        except AgentError:
            pass
        # stdout closed: the agent is exiting; _watch_process classifies the exit. If it does not exit, it
        # can no longer talk to us either.
        assert self._proc is not None
        with trio.move_on_after(5):
            await self._proc.wait()
            return
        self.end(State.CRASHED, "agent_closed_stdout",
                 CrashInfo(reason="agent_closed_stdout: the agent closed its stdout but kept running"))

    async def _watch_process(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self._end_request is not None:
            return
        exit_code, sig = (None, -code) if code < 0 else (code, None)
        if code == 0 and self.rec.status == State.IDLE:
            self.end(State.COMPLETED, "agent_exited")
            return
        how = f"signal {signal.Signals(sig).name}" if sig else f"code {exit_code}"
        self.end(State.CRASHED, "agent_exited", CrashInfo(
            reason=f"agent_exited: the agent exited with {how} while {self.rec.status.value}",
            exitCode=exit_code, signal=sig))

    # ---- usage -------------------------------------------------------------------------------
    def _add_usage(self, usage: dict[str, Any]) -> None:
        u = self.rec.tokenUsage or TokenUsage()

        def n(*keys: str) -> int:
            for k in keys:
                v = usage.get(k)
                if isinstance(v, (int, float)) and v > 0:
                    return int(v)
            return 0
        tin, tout = n("inputTokens", "input_tokens"), n("outputTokens", "output_tokens")
        cread = n("cachedReadTokens", "cacheReadTokens", "cache_read_input_tokens")
        cwrite = n("cachedWriteTokens", "cacheCreationTokens", "cache_creation_input_tokens")
        total = n("totalTokens") or (tin + tout)
        cost = self._turn_cost(tin, tout, cread, cwrite)
        u.inputTokens += tin
        u.outputTokens += tout
        u.cacheReadTokens += cread
        u.cacheCreationTokens += cwrite
        u.totalTokens += total
        u.costUsd = round(u.costUsd + cost, 6)
        self.rec.tokenUsage = u
        ledger = self.host.usage
        if ledger is not None and total:
            rec = self.rec
            ledger.record(UsageRecord(
                ts=now_ms(), sessionId=rec.id, keyId=rec.ownerKeyId, agent=rec.agent, model=rec.model,
                inputTokens=tin, outputTokens=tout, cacheReadTokens=cread, cacheCreationTokens=cwrite,
                totalTokens=total, costUsd=cost))

    def _turn_cost(self, tin: int, tout: int, cread: int, cwrite: int) -> float:
        """One figure for the turn, used by the session, the metering ledger and every report alike: what the
        agent says the session has cost since the last turn (usage_update `cost` in USD, cumulative), else an
        estimate from list prices."""
        cost = self.rec.contextUsage.cost if self.rec.contextUsage is not None else None
        if isinstance(cost, dict) and str(cost.get("currency", "USD")).upper() == "USD" \
                and isinstance(cost.get("amount"), (int, float)) and cost["amount"] >= self._cost_seen:
            spent = round(float(cost["amount"]) - self._cost_seen, 6)
            self._cost_seen = float(cost["amount"])
            return spent
        return estimate_cost(self.rec.model, tin, tout, cread, cwrite)

    # ---- agent traffic (ClientHandler, called by the connection's reader and request tasks) ------
    def on_activity(self) -> None:
        self._put(_Activity())

    async def on_update(self, session_id: str, update: w.SessionUpdate | w.UnknownUpdate) -> None:
        rec = self.rec
        if rec.acpSessionId is not None and session_id != rec.acpSessionId:
            self.log.warning("session.foreign_update_ignored", acp_session=session_id)
            return
        self._put(_Update(update, replay=self._loading))  # a session/load replay: our transcript already holds it

    async def on_request_permission(self, params: w.RequestPermissionParams) -> dict[str, Any]:
        key, reply = next(self._asks), _Reply()
        self._replies[key] = reply
        if self._put(_Ask(key, params)):
            await reply.done.wait()
        self._replies.pop(key, None)
        return {"outcome": reply.outcome}

    def _put(self, item: _Input) -> bool:
        try:
            self._inbox_send.send_nowait(item)
            return True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False  # the session has ended

    # ---- persistence ---------------------------------------------------------------------------
    async def _recover(self) -> None:
        """A session the last daemon left live: what the store holds decides the next transcript id and which
        queued prompts are replayed (SessionMachine.recovered), never the record's cached count."""
        count = await self._store.transcript_count(self.rec.id)
        last = await self._store.read_transcript(self.rec.id, max(0, count - 1), 1) if count else []
        queued = len(self.rec.promptQueue)
        self.machine.recovered(stored_entries=count, last_entry_id=last[-1].id if last else 0, why=self.resume_reason)
        self.log.info("session.recovered", transcript_entries=count, next_entry_id=self.machine.builder.next_id,
                      queued_prompts=len(self.rec.promptQueue), delivered_before_restart=queued - len(
                          self.rec.promptQueue))

    async def _save(self) -> None:
        self.rec.pendingPermission = self.machine.head  # the machine's queue is the one place of it
        # published at once; flushed before a command answers
        await self._durably(lambda: self.host.save(self.rec, durable=False), "record")

    async def _durably(self, call: Any, what: str) -> None:
        """A write of the session's own: retried until the store is back (in order: the owner waits for it), so
        an outage neither drops it nor ends the session; lost (and logged) only if the daemon gives up on the
        store while stopping."""
        try:
            await until_stored(self._store.health, call, what=f"session {self.rec.id}: {what}")
        except StoreUnavailable as exc:
            self.log.error("session.write_lost", what=what, error=exc.message)
        except SessionFenced as exc:  # another node owns the session now: stop, write nothing more
            self.fence(exc.message)

    async def _append(self, entries: list[Any]) -> None:
        if not entries:
            return
        await self._durably(lambda: self._store.append_transcript(self.rec.id, entries), "transcript")
        self.rec.transcriptCount += len(entries)
        for entry in entries:
            self._bus.publish(self.rec.id, ev.Message(entry=entry))

    async def _finish(self) -> None:
        """Runs once, shielded: stop the agent, settle the final state, tell everyone. A kill settles first
        (the session is `killed`, saved, at once: DELETE answers without waiting for the agent) and stops the
        agent after, in this same task (the lifeline still ends it if the daemon dies meanwhile)."""
        if self.fenced is not None:
            await self._abandon()
            return
        status, reason, crash = self._end_request or (State.CRASHED, "internal_error",
                                                     CrashInfo(reason="internal_error: runner ended"))
        try:
            await self._apply(self.machine.end_requested())  # the agent's waiting requests: cancelled
            cancel_turn = self.machine.turn is not None
            if status == State.KILLED:
                try:
                    await self._settle(status, reason, crash)
                finally:
                    await self._stop_agent(crash, cancel_turn=cancel_turn)
            else:
                try:
                    await self._stop_agent(crash, cancel_turn=cancel_turn)
                finally:
                    await self._settle(status, reason, crash)
        finally:
            self.ready.set()
            self.settled.set()
            self.finished.set()

    async def _abandon(self) -> None:
        """The end of a fenced session: the agent is killed (no polite cancel: its turn is the new owner's to
        resume), whatever waited is told the session moved, and nothing is saved or published."""
        try:
            self._inbox_send.close()
            async for item in self._inbox:
                if isinstance(item, _Command):
                    item.error = SessionFenced(f"session {self.rec.id} moved to another node; try again")
                    item.done.set()
            for reply in self._replies.values():
                reply.done.set()
            self._replies.clear()
            if self._proc is not None:
                await self._proc.stop(grace=0, stdin_grace=0)
                await self.host.lifeline.unregister(self._proc.pgid)
        finally:
            self.ready.set()
            self.settled.set()
            self.finished.set()

    async def _stop_agent(self, crash: CrashInfo | None, *, cancel_turn: bool) -> None:
        """The agent's stop sequence: cancel the turn politely, then the escalation in AgentProcess.stop."""
        rec, proc, reason = self.rec, self._proc, self._end_request[1] if self._end_request else ""
        if proc is None:
            return
        if self._conn is not None and cancel_turn and rec.acpSessionId and proc.returncode is None:
            try:
                with trio.move_on_after(1):
                    await self._conn.cancel(rec.acpSessionId)
            except AgentError:
                pass
        await proc.stop(grace=self._cfg.killGraceMs / 1000)
        await self.host.lifeline.unregister(proc.pgid)
        if crash is not None:
            code = proc.returncode
            if crash.exitCode is None and crash.signal is None and code is not None \
                    and reason not in ("acp_protocol_error", "acp_request_timeout", "acp_start_timeout"):
                crash.exitCode, crash.signal = (None, -code) if code < 0 else (code, None)
            tail = proc.stderr_tail(2048)
            if tail:
                crash.stderrTail = tail

    async def _settle(self, status: State | None, reason: str, crash: CrashInfo | None) -> None:
        """The final state: what was queued fails, the machine settles, the record is saved and flushed."""
        try:
            await self._settle_state(status, reason, crash)
        except BaseException as exc:
            self._settle_error = exc
            raise

    async def _settle_state(self, status: State | None, reason: str, crash: CrashInfo | None) -> None:
        rec, machine = self.rec, self.machine
        self._inbox_send.close()
        async for item in self._inbox:  # fail what was queued but never handled
            if isinstance(item, _Command):
                item.error = SessionNotLive(f"session {rec.id} ended")
                item.done.set()
        for reply in self._replies.values():  # requests that never reached the machine: cancelled
            reply.done.set()
        self._replies.clear()
        rec.pid = None
        await self._apply(machine.finish(status, reason, crash))
        rec.pendingPermission = machine.head
        if status is not None:
            self.log.info("session.ended", status=rec.status.value, reason=reason,
                          detail=crash.reason if crash else None)
        await self._durably(self._store.flush, "flush")
        self.ready.set()
        self.settled.set()

    # ---- views ---------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def busy(self) -> bool:
        """A turn is in flight or queued."""
        return self.machine.busy

    @property
    def pending_permissions(self) -> list[PendingPermission]:
        """The permission requests waiting for a decision, oldest (the one approve/reject decides) first."""
        return self.machine.pending

    @property
    def queue_length(self) -> int:
        return len(self.machine.prompts)

    @property
    def delivered_prompts(self) -> int:
        return self.machine.delivered_prompts

    @property
    def idle_seconds(self) -> float:
        return trio.current_time() - self.machine.last_activity

    def stderr_tail(self) -> str:
        return self._proc.stderr_tail() if self._proc else ""


__all__ = ["LIVE", "RunnerHost", "SessionRunner"]
