"""One session: the owner task that drives an agent process through the session state machine.

Everything that changes a session happens here, in tasks of the session's own nursery: commands arrive on
its channel (send, approve, reject, interrupt), agent traffic arrives through :class:`AcpConnection`
callbacks, and the end (kill, close, crash, daemon shutdown) is requested with :meth:`SessionRunner.end`
and carried out in one place, :meth:`SessionRunner._finish`."""

from __future__ import annotations

import collections
import itertools
import signal
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

import aegisd.sessions.failures as failures
from aegisd import __version__
from aegisd.acp import AcpConnection, AgentProcess, RemoteError, agent_environment, spawn_agent
from aegisd.core import events as ev
from aegisd.core import wire as w
from aegisd.core.errors import (
    AegisError,
    AgentError,
    InvalidModel,
    NoPendingPermission,
    PermissionRequestMismatch,
    ProtocolError,
    RequestTimeout,
    SessionNotLive,
)
from aegisd.core.models import (
    ContextUsage,
    CrashInfo,
    PendingPermission,
    PermissionOption,
    SessionRecord,
    TokenUsage,
    now_ms,
)
from aegisd.core.permissions import PermissionProfile, Policy, choose_option, daemon_policy, evaluate_profile
from aegisd.core.pricing import UsageRecord, estimate_cost
from aegisd.core.states import LIVE, TERMINAL, State, check_transition
from aegisd.core.transcript import TranscriptBuilder

if TYPE_CHECKING:
    from aegisd.sessions.manager import AgentLaunch, SessionManager

log = structlog.get_logger("aegisd.session")

CANCEL_GRACE_S = 10.0


class _Command:
    __slots__ = ("args", "done", "error", "kind", "result")

    def __init__(self, kind: str, args: dict[str, Any]) -> None:
        self.kind = kind
        self.args = args
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _Decision:
    """An open `session/request_permission`, waiting for approve/reject/cancel."""

    __slots__ = ("done", "info", "options", "outcome")

    def __init__(self, info: PendingPermission, options: list[w.PermissionOption]) -> None:
        self.info = info
        self.options = options
        self.done = trio.Event()
        self.outcome: dict[str, Any] = {"outcome": "cancelled"}


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
    def __init__(self, manager: SessionManager, record: SessionRecord, launch: AgentLaunch, *,
                 resume: bool = False) -> None:
        self.manager = manager
        self.rec = record
        self.launch = launch
        self.resume = resume
        self.log = log.bind(session_id=record.id)
        self._cfg = manager.config
        self._bus = manager.bus
        self._store = manager.store
        self._proc: AgentProcess | None = None
        self._conn: AcpConnection | None = None
        self._builder = TranscriptBuilder(next_id=record.transcriptCount + 1)
        self._cmd_send, self._cmd_recv = trio.open_memory_channel[_Command](256)
        self._queue: collections.deque[str] = collections.deque()
        self._turn_active = False
        self._prompt_sent = False
        self._cancel_early = False
        self._turn_started = 0.0
        self._timeout_cancel_at: float | None = None
        self._decisions: collections.deque[_Decision] = collections.deque()
        self._requests = itertools.count(1)  # permission request ids are never reused within a session
        self._native_mode = False
        self._loading = False
        self._last_activity = trio.current_time()
        self._nursery: trio.Nursery | None = None
        self._end_request: tuple[State, str, CrashInfo | None] | None = None
        self._models = _ModelChoice()
        self._state_changed = trio.Event()
        self._cost_seen = 0.0  # the agent's cumulative cost report at the end of the last turn
        self.start_error: AegisError | None = None  # why the session could not start as asked (create says so)
        self.ready = trio.Event()  # idle for the first time, or ended
        self.finished = trio.Event()
        self.delivered_prompts = 0

    # ---- public, called from other tasks -------------------------------------------------------
    async def command(self, kind: str, **args: Any) -> Any:
        if self.finished.is_set() or self._end_request is not None:
            raise SessionNotLive(f"session {self.rec.id} is ending" if not self.finished.is_set()
                                 else f"session {self.rec.id} is {self.rec.status.value}")
        cmd = _Command(kind, args)
        try:
            self._cmd_send.send_nowait(cmd)
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
            self._end_request = (status, reason, crash) if status is not None else (None, reason, None)  # type: ignore
            self.log.info("session.ending", status=status.value if status else None, reason=reason)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        elif crash is not None and self._end_request[2] is not None:
            old = self._end_request[2]  # fill in what the first report did not know
            if old.exitCode is None and crash.exitCode is not None:
                old.exitCode = crash.exitCode
            if old.signal is None and crash.signal is not None:
                old.signal = crash.signal

    async def stop(self, status: State | None, reason: str) -> None:
        self.end(status, reason)
        await self.finished.wait()

    # ---- the owner task ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._end_request is not None:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._command_loop)
                await self._start()
                nursery.start_soon(self._watchdog)
        except Exception as exc:  # a bug here must end this session only, never the daemon
            self.log.exception("session.internal_error")
            self.end(State.CRASHED, "internal_error", CrashInfo(reason=f"internal_error: {exc!r}"))
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _start(self) -> None:
        rec, cfg = self.rec, self._cfg
        if self.resume:
            await self._set_state(State.PENDING, detail="daemon_restart")
        env = agent_environment(self.manager.environ, extra=self.launch.env, pass_env=self.launch.pass_env,
                                markers=self.manager.markers(rec.id))
        try:
            self._proc = await spawn_agent(self.launch.command, cwd=rec.workDir, env=env, session_id=rec.id,
                                           token=self.manager.lifeline.token, stderr_limit=cfg.stderrTailBytes,
                                           cgroups=self.manager.cgroups)
        except OSError as exc:
            said = f"cannot start {self.launch.command[0]!r}: {exc.strerror or exc}"
            rec.lastError = failures.explain(failures.AGENT_MISSING, said, agent=rec.agent)
            self.end(State.CRASHED, "agent_spawn_failed", CrashInfo(reason=f"agent_spawn_failed: {said}"))
            return
        proc = self._proc
        await self.manager.lifeline.register(proc.pgid)
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
            if self.resume:
                if not (rec.acpSessionId and init.agentCapabilities.loadSession):
                    self.end(State.CRASHED, "daemon_restart", CrashInfo(
                        reason="daemon_restart: the agent cannot load sessions (no loadSession capability), "
                               "so the session could not be resumed"))
                    return
                self._loading = True
                try:
                    loaded = await conn.load_session(rec.acpSessionId, rec.workDir, timeout=init_timeout * 2,
                                                     mcp_servers=self.manager.mcp_specs(rec))
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
        self._touch()
        await self._set_state(State.IDLE)
        self.ready.set()
        self._maybe_next_turn()

    async def _new_or_fork(self, conn: AcpConnection, init: w.InitializeResult, timeout: float) -> w.NewSessionResult:
        """`session/new`, or for a fork whose source the agent can fork, `session/fork` of the source's ACP
        session. A fork the agent refuses falls back to a new session (the caller then seeds it with the
        source's transcript)."""
        rec = self.rec
        mcp = self.manager.mcp_specs(rec)
        if rec.forkedFrom is None or rec.forkMethod is not None:
            return await conn.new_session(rec.workDir, timeout=timeout, mcp_servers=mcp)
        src = self.manager.records.get(rec.forkedFrom)
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
            rec.agentModes, self._native_mode = [], False
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
                    self._native_mode = False
                    return
            self._native_mode = True
        else:
            # the agent cannot apply it: the daemon does (see _permissions.daemon_policy). An agent in another
            # mode of its own (claude-agent-acp 0.101 starts in "auto"; or the session's previous mode, such as
            # bypassPermissions) is put back in "default" so requests reach the daemon's policy instead of
            # being decided silently.
            self._native_mode = False
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

    async def _command_loop(self) -> None:
        async for cmd in self._cmd_recv:
            try:
                cmd.result = await self._handle(cmd)
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
        if cmd.kind == "send":
            return self._send_prompt(cmd.args["text"])
        if cmd.kind in ("approve", "reject"):
            return await self._decide(cmd.kind == "approve", cmd.args.get("optionId"), cmd.args.get("requestId"),
                                      cmd.args.get("by"))
        if cmd.kind == "interrupt":
            return await self._interrupt()
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
                    "appliedBy": "agent" if self._native_mode else "daemon"}
        raise AegisError(f"unknown session command {cmd.kind!r}")

    # ---- prompts and turns ---------------------------------------------------------------------
    def _send_prompt(self, text: str) -> dict[str, Any]:
        self.manager.metrics.prompts += 1
        self._queue.append(text)
        idle_now = self.rec.status == State.IDLE and not self._turn_active
        self._maybe_next_turn()
        if idle_now:
            return {"ok": True, "delivered": True, "queued": False, "attempts": 1}
        return {"ok": True, "delivered": False, "queued": True, "queuePosition": len(self._queue), "attempts": 0}

    def _maybe_next_turn(self) -> None:
        if (self._queue and not self._turn_active and self.rec.status == State.IDLE
                and self._end_request is None and self._nursery is not None):
            self._turn_active = True
            self.delivered_prompts += 1
            self._nursery.start_soon(self._turn, self._queue.popleft())

    async def _turn(self, text: str) -> None:
        rec = self.rec
        assert self._conn is not None and rec.acpSessionId is not None
        self._turn_active = True
        self._turn_started = trio.current_time()
        self._timeout_cancel_at = None
        await self._append(self._builder.user_prompt(text))
        rec.turns += 1
        self._touch()
        usage: dict[str, Any] | None = None
        try:
            req = await self._conn.send_request("session/prompt", {"sessionId": rec.acpSessionId,
                                                                   "prompt": [{"type": "text", "text": text}]})
            self._prompt_sent = True
            if self._cancel_early:  # an interrupt came before the prompt was on the wire
                await self._conn.cancel(rec.acpSessionId)
            await self._set_state(State.RUNNING)
            result = self._conn.decode_result("session/prompt", await self._conn.wait(req), w.PromptResult)
            stop, usage = result.stopReason, result.usage
        except RemoteError as exc:
            stop = "error"
            rec.lastError = failures.from_prompt_error(exc.rpc_code, exc.rpc_message, exc.rpc_data, agent=rec.agent)
            await self._append(self._builder.system(rec.lastError.message, "error"))
        except AgentError:
            return  # the agent died or broke the protocol: the session is ending
        if self._timeout_cancel_at is not None and stop == "cancelled":
            stop = "timeout"
        self._turn_active = False
        self._prompt_sent = self._cancel_early = False
        self.manager.metrics.turns += 1
        self.manager.metrics.turn_duration.observe((trio.current_time() - self._turn_started) * 1000)
        self._resolve_all_decisions()
        rec.stopReason = stop
        if stop != "error":
            rec.lastError = None
        if usage:
            self._add_usage(usage)
        await self._append(self._builder.turn_end(stop, usage))
        turn = ev.Turn(stopReason=stop, usage=usage, turn=rec.turns)
        if stop == "error" and rec.lastError is not None:
            turn.error, turn.errorKind = rec.lastError.message, rec.lastError.kind
        self._bus.publish(rec.id, turn)
        if rec.status in (State.RUNNING, State.STALLED, State.PERMISSION_PROMPT):
            rec.pendingPermission = None
            await self._set_state(State.IDLE, detail=stop)
        await self._store.flush()
        self._maybe_next_turn()

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
        ledger = self.manager.usage
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

    async def _interrupt(self) -> dict[str, Any]:
        self._queue.clear()
        if not self._turn_active:
            return {"ok": True, "interrupted": False}
        assert self._conn is not None and self.rec.acpSessionId is not None
        if self._prompt_sent:
            try:
                await self._conn.cancel(self.rec.acpSessionId)
            except AgentError:  # its stdin is closed: the agent is exiting, and the session with it
                raise SessionNotLive(f"session {self.rec.id} is ending: its agent is gone") from None
        else:
            self._cancel_early = True
        self._resolve_all_decisions()
        return {"ok": True, "interrupted": True}

    # ---- permissions ---------------------------------------------------------------------------
    async def on_request_permission(self, params: w.RequestPermissionParams) -> dict[str, Any]:
        rec = self.rec
        self._touch()
        await self._append(self._builder.permission_request(params))
        tc = params.toolCall
        policy = daemon_policy(rec.permissionMode, tc.kind, native=self._native_mode)
        by = rec.permissionMode
        if rec.permissionProfile:  # explicit per-session rules come first (a deny rule wins even in bypass)
            profile = msgspec.convert(rec.permissionProfile, PermissionProfile)
            ruled = evaluate_profile(profile, kind=tc.kind, title=tc.title, name=tc.name, raw_input=tc.rawInput)
            if ruled is not None:
                policy, by = ruled, "permission profile"
        if policy is not Policy.ASK:
            try:
                option = choose_option(params.options, allow=policy is Policy.ALLOW)
            except AegisError:
                policy = Policy.ASK
            else:
                verb = "auto-approved" if policy is Policy.ALLOW else "auto-rejected"
                if policy is Policy.ALLOW:
                    self.manager.metrics.auto_approvals += 1
                else:
                    self.manager.metrics.auto_rejections += 1
                await self._append(self._builder.permission_decision(
                    f"{verb} ({by}): {option}", tc.toolCallId or None))
                self._bus.publish(rec.id, ev.PermissionDecided(auto=True, decision=policy.value, optionId=option,
                                                               toolTitle=tc.title or "", by=by))
                return {"outcome": {"outcome": "selected", "optionId": option}}
        title = tc.title or tc.name or "tool"
        info = PendingPermission(
            requestId=f"perm-{now_ms()}-{next(self._requests)}", toolTitle=title, toolKind=tc.kind,
            toolCallId=tc.toolCallId or None, rawInput=tc.rawInput,
            options=[PermissionOption(optionId=o.optionId, name=o.name, kind=o.kind) for o in params.options],
            since=now_ms(), toolName=title, prompt=title, startedAt=now_ms())
        decision = _Decision(info, params.options)
        self._decisions.append(decision)
        rec.pendingPermission = self._decisions[0].info
        if rec.status != State.PERMISSION_PROMPT:
            await self._set_state(State.PERMISSION_PROMPT, detail=title)
        else:
            await self._save()
        self._bus.publish(rec.id, ev.PermissionRequested(request=info))
        try:
            await decision.done.wait()
        finally:
            if decision in self._decisions:
                self._decisions.remove(decision)
        rec.pendingPermission = self._decisions[0].info if self._decisions else None
        if not self._decisions and rec.status == State.PERMISSION_PROMPT and self._end_request is None:
            self._touch()
            await self._set_state(State.RUNNING if self._turn_active else State.IDLE)
        return {"outcome": decision.outcome}

    async def _decide(self, allow: bool, option_id: str | None, request_id: str | None = None,
                      by: str | None = None) -> dict[str, Any]:
        head = self._decisions[0].info if self._decisions else None
        if request_id is not None and (head is None or head.requestId != request_id):
            # the caller's user saw another request than the one pending: decide nothing
            queued = any(d.info.requestId == request_id for d in self._decisions)
            what = f"permission request {request_id} of session {self.rec.id}"
            if head is None:
                message = f"{what} is not pending: nothing is pending"
            elif queued:
                message = f"{what} waits behind {head.requestId} ({head.toolTitle}): decide that one first"
            else:
                message = f"{what} is not pending: the pending one is {head.requestId} ({head.toolTitle})"
            raise PermissionRequestMismatch(
                message,
                details={"requestId": request_id, "pendingRequestId": head.requestId if head else None,
                         "queued": queued})
        if not self._decisions:
            raise NoPendingPermission(f"session {self.rec.id} has no pending permission request")
        decision = self._decisions[0]
        option = choose_option(decision.options, allow=allow, option_id=option_id)
        decision.outcome = {"outcome": "selected", "optionId": option}
        m = self.manager.metrics
        if allow:
            m.approvals += 1
        else:
            m.rejections += 1
        m.permission_latency.observe(max(0, now_ms() - decision.info.since))
        await self._append(self._builder.permission_decision(
            f"{'approved' if allow else 'rejected'}: {option}", decision.info.toolCallId))
        self._bus.publish(self.rec.id, ev.PermissionDecided(auto=False, decision="allow" if allow else "deny",
                                                            optionId=option, requestId=decision.info.requestId,
                                                            by=by))
        # settle the session before answering the caller: whoever asks next sees the decision taken (the
        # request's own task, woken below, finds nothing left to do)
        self._decisions.remove(decision)
        rec = self.rec
        rec.pendingPermission = self._decisions[0].info if self._decisions else None
        if not self._decisions and rec.status == State.PERMISSION_PROMPT and self._end_request is None:
            self._touch()
            await self._set_state(State.RUNNING if self._turn_active else State.IDLE)
        decision.done.set()
        return {"ok": True, "optionId": option, "requestId": decision.info.requestId}

    def _resolve_all_decisions(self) -> None:
        for decision in list(self._decisions):
            decision.outcome = {"outcome": "cancelled"}
            decision.done.set()

    # ---- agent updates (ClientHandler) ---------------------------------------------------------
    def on_activity(self) -> None:
        self._last_activity = trio.current_time()

    def _touch(self) -> None:
        self._last_activity = trio.current_time()
        self.rec.lastActivity = now_ms()

    async def on_update(self, session_id: str, update: w.SessionUpdate | w.UnknownUpdate) -> None:
        rec = self.rec
        if rec.acpSessionId is not None and session_id != rec.acpSessionId:
            self.log.warning("session.foreign_update_ignored", acp_session=session_id)
            return
        self._touch()
        if isinstance(update, w.AvailableCommandsUpdate):
            rec.availableCommands = update.availableCommands
        elif isinstance(update, w.CurrentModeUpdate):
            rec.currentMode = update.currentModeId
        elif isinstance(update, w.SessionInfoUpdate):
            if update.title:
                rec.title = update.title
        elif isinstance(update, w.UsageUpdate):
            rec.contextUsage = ContextUsage(used=update.used, size=update.size, cost=update.cost)
        elif isinstance(update, w.ConfigOptionUpdate):
            changed = _ModelChoice.of(update.configOptions, None)
            if changed.values:
                self._models = changed
                changed.report(rec)
        if self._loading:
            return  # a session/load replay: our transcript already holds it
        if rec.status == State.STALLED:
            await self._set_state(State.RUNNING, detail="activity")
        if isinstance(update, (w.AgentMessageChunk, w.AgentThoughtChunk)):
            text = w.content_text(update.content)
            if text:
                self._bus.publish(rec.id, ev.Chunk(
                    role="assistant",
                    contentType="text" if isinstance(update, w.AgentMessageChunk) else "thinking",
                    text=text))
        elif isinstance(update, w.ToolCall):
            self._bus.publish(rec.id, ev.Tool(toolUseId=update.toolCallId, title=update.title, kind=update.kind,
                                              status=update.status or "pending"))
        elif isinstance(update, w.ToolCallUpdate) and (update.status or update.title):
            self._bus.publish(rec.id, ev.Tool(toolUseId=update.toolCallId, title=update.title, kind=update.kind,
                                              status=update.status))
        await self._append(self._builder.update(update))

    # ---- stall detection and prompt timeout ----------------------------------------------------
    async def _watchdog(self) -> None:
        prompt_timeout = self._cfg.acpPromptTimeoutMs / 1000
        idle_timeout = self._cfg.idleTimeoutMs / 1000
        while True:
            now = trio.current_time()
            idle_for = now - self._last_activity
            stall_after = self.rec.stallThresholdMs / 1000
            wake = now + min(stall_after, prompt_timeout, 30.0)
            if idle_timeout > 0 and self.rec.status == State.IDLE and not self.busy:
                if idle_for >= idle_timeout:  # its agent holds hundreds of MiB: give them back
                    self.end(State.COMPLETED, "idle_timeout")
                    return
                wake = min(wake, self._last_activity + idle_timeout)
            if self._turn_active and self.rec.status == State.RUNNING:
                if idle_for >= stall_after:
                    await self._set_state(State.STALLED, detail="no agent activity")
                    self._bus.publish(self.rec.id, ev.Stall(
                        stallType="no_activity",
                        detail=f"no agent activity for {int(idle_for)} s (threshold {int(stall_after)} s)"))
                else:
                    wake = min(wake, self._last_activity + stall_after)
            if self._turn_active and self.rec.status in (State.RUNNING, State.STALLED):
                if self._timeout_cancel_at is None:
                    if idle_for >= prompt_timeout:
                        self.log.warning("session.prompt_timeout", idle_s=round(idle_for, 1))
                        self._timeout_cancel_at = now
                        await self._append(self._builder.system(
                            f"prompt timed out after {int(idle_for)} s without agent activity; cancelling",
                            "error"))
                        assert self._conn is not None and self.rec.acpSessionId is not None
                        try:
                            await self._conn.cancel(self.rec.acpSessionId)
                        except AgentError:
                            pass
                        wake = now + CANCEL_GRACE_S
                    else:
                        wake = min(wake, self._last_activity + prompt_timeout)
                elif now - self._timeout_cancel_at >= CANCEL_GRACE_S:
                    self.end(State.CRASHED, "acp_request_timeout", CrashInfo(
                        reason="acp_request_timeout: the agent neither finished nor honoured session/cancel "
                               f"after the prompt timeout ({prompt_timeout:g} s)"))
                    return
                else:
                    wake = min(wake, self._timeout_cancel_at + CANCEL_GRACE_S)
            with trio.move_on_at(max(wake, trio.current_time() + 0.01)):
                await self._state_changed.wait()  # a new state may need an earlier look (idle: its timeout)

    # ---- state, persistence --------------------------------------------------------------------
    async def _set_state(self, new: State, *, detail: str | None = None) -> None:
        rec = self.rec
        old = rec.status
        if old == new:
            return
        check_transition(old, new)
        rec.status = new
        rec.lastActivity = now_ms()
        self._state_changed.set()
        self._state_changed = trio.Event()
        if new != State.PERMISSION_PROMPT:
            rec.pendingPermission = None if not self._decisions else rec.pendingPermission
        await self._save()
        self._bus.publish(rec.id, ev.StatusChanged(status=new, previous=old, detail=detail or None))
        self.log.info("session.status", status=new.value, previous=old.value, detail=detail)

    async def _save(self) -> None:
        await self.manager.save(self.rec)

    async def _append(self, entries: list[Any]) -> None:
        if not entries:
            return
        await self._store.append_transcript(self.rec.id, entries)
        self.rec.transcriptCount += len(entries)
        for entry in entries:
            self._bus.publish(self.rec.id, ev.Message(entry=entry))

    async def _finish(self) -> None:
        """Runs once, shielded: stop the agent, settle the final state, tell everyone."""
        rec = self.rec
        status, reason, crash = self._end_request or (State.CRASHED, "internal_error",
                                                     CrashInfo(reason="internal_error: runner ended"))
        self._resolve_all_decisions()
        # a polite stop first: cancel the turn, then the escalation in AgentProcess.stop
        if self._conn is not None and self._turn_active and rec.acpSessionId and self._proc is not None \
                and self._proc.returncode is None:
            try:
                with trio.move_on_after(1):
                    await self._conn.cancel(rec.acpSessionId)
            except AgentError:
                pass
        if self._proc is not None:
            await self._proc.stop(grace=self._cfg.killGraceMs / 1000)
            await self.manager.lifeline.unregister(self._proc.pgid)
            if crash is not None:
                code = self._proc.returncode
                if crash.exitCode is None and crash.signal is None and code is not None \
                        and reason not in ("acp_protocol_error", "acp_request_timeout", "acp_start_timeout"):
                    crash.exitCode, crash.signal = (None, -code) if code < 0 else (code, None)
                tail = self._proc.stderr_tail(2048)
                if tail:
                    crash.stderrTail = tail
        self._cmd_send.close()
        async for cmd in self._cmd_recv:  # fail what was queued but never handled
            cmd.error = SessionNotLive(f"session {rec.id} ended")
            cmd.done.set()
        rec.pid = None
        if status is None:
            # daemon shutdown: keep the state so the next daemon resumes the session
            rec.pendingPermission = None
            self._builder.flush()
            await self._save()
        else:
            flushed = self._builder.flush()
            if flushed:
                await self._append(flushed)
            rec.crash = crash
            rec.endReason = reason
            if status == State.CRASHED:
                self.manager.metrics.crashes += 1
            rec.endedAt = now_ms()
            rec.pendingPermission = None
            if rec.status not in TERMINAL:
                check_transition(rec.status, status)
                previous = rec.status
                rec.status = status
                await self._save()
                self._bus.publish(rec.id, ev.StatusChanged(status=status, previous=previous, detail=reason or None))
            ended = ev.Ended(reason=reason, status=rec.status)
            if crash is not None:  # the crash's reason says more than the short one
                ended.reason, ended.exitCode, ended.signal = crash.reason, crash.exitCode, crash.signal
            self._bus.publish(rec.id, ended)
            self.log.info("session.ended", status=rec.status.value, reason=reason,
                          detail=crash.reason if crash else None)
        await self._store.flush()
        self.ready.set()
        self.finished.set()
        self.manager._runner_finished(self)

    # ---- views ---------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def busy(self) -> bool:
        """A turn is in flight or queued."""
        return self._turn_active or bool(self._queue)

    @property
    def pending_permissions(self) -> list[PendingPermission]:
        """The permission requests waiting for a decision, oldest (the one approve/reject decides) first."""
        return [d.info for d in self._decisions]

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def idle_seconds(self) -> float:
        return trio.current_time() - self._last_activity

    def stderr_tail(self) -> str:
        return self._proc.stderr_tail() if self._proc else ""


__all__ = ["LIVE", "SessionRunner"]
