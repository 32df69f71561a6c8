"""Pipelines: a DAG of stages, each run as a session once its dependencies completed.

A stage completes when its session's turn ends with `end_turn`; it fails on any other stop reason (refusal,
max_tokens, cancelled, error, timeout), when its session ends (crash, kill), or when it runs longer than its
timeout. A failed stage is retried (a new session) up to `retries` times; after that the pipeline fails and
the stages that had not started are marked `skipped`. Pipelines are persisted (one document each in the store's
`pipelines` collection, aegisd/store, written on every change) and resumed after a daemon restart: a stage that
was running is started again in a new session. Finished pipelines stay listed (the original evicted them after 30 s).
In a cluster, ``reload`` shows here the stored state of a pipeline another node runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import structlog
import trio

from aegisd.bus import EventBus
from aegisd.core.errors import NotFound, ValidationError
from aegisd.core.events import Ended, Pipeline, Turn, Verification, payload
from aegisd.core.models import now_ms
from aegisd.core.states import State
from aegisd.features.verify import Verifier
from aegisd.sessions import SessionManager
from aegisd.store import Collection, migrate_legacy

if TYPE_CHECKING:
    from aegisd.core.models import SessionRecord

log = structlog.get_logger("aegisd.pipelines")


class StageSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100,
                                      description="default: stage-N (its position, from 1)")] | None = None
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    workDir: str | None = None
    dependsOn: list[str] = []
    permissionMode: str | None = None
    autoApprove: bool | None = None
    agent: str | None = None
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    timeoutMs: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 0
    # after the turn, run the project's checks (aegisd/features/verify.py); on failure hand them back to the same
    # session up to verifyFixes times before the stage fails
    verify: bool = False
    verifyFixes: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    verifyCriticalOnly: bool = False


class PipelineSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    workDir: str
    stages: Annotated[list[StageSpec], msgspec.Meta(min_length=1, max_length=50)]
    maxRetries: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    sequential: Annotated[bool, msgspec.Meta(
        description="stages without dependsOn depend on the stage before them (default: they start at once)")] = False


def stage_name(i: int, s: StageSpec) -> str:
    return s.name or f"stage-{i + 1}"


def resolve_stages(spec: PipelineSpec) -> list[StageSpec]:
    """The stages with their default names (stage-N) and, for a sequential pipeline, their implied dependencies."""
    out: list[StageSpec] = []
    for i, s in enumerate(spec.stages):
        changes: dict[str, Any] = {}
        if s.name is None:
            changes["name"] = stage_name(i, s)
        if spec.sequential and i > 0 and not s.dependsOn:
            changes["dependsOn"] = [stage_name(i - 1, spec.stages[i - 1])]
        out.append(msgspec.structs.replace(s, **changes) if changes else s)
    return out


class StageState(msgspec.Struct):
    name: str
    prompt: str
    workDir: str
    dependsOn: list[str]
    permissionMode: str | None = None
    agent: str | None = None
    retries: int = 0
    timeoutMs: int = 0
    verify: bool = False
    verifyFixes: int = 0
    verifyCriticalOnly: bool = False
    status: str = "pending"  # pending | running | verifying | completed | failed | skipped
    sessionId: str | None = None
    sessions: list[str] = []
    attempts: int = 0
    startedAt: int | None = None
    completedAt: int | None = None
    stopReason: str | None = None
    error: str | None = None
    awaitTurn: int = 1  # the session's turn whose end finishes this attempt (later after a fix prompt)
    fixes: int = 0  # fix prompts sent in this attempt
    verification: dict[str, Any] | None = None  # the last verdict: {ok, summary, steps: [{name, ok}]}


ACTIVE = ("running", "verifying")


class PipelineRecord(msgspec.Struct):
    id: str
    name: str
    workDir: str
    status: str  # running | completed | failed
    stages: list[StageState]
    createdAt: int
    updatedAt: int
    ownerKeyId: str | None = None
    creatorSessionId: str | None = None  # created by that session's agent (see aegisd/auth/_agents.py)
    currentStage: str | None = None
    completedAt: int | None = None
    error: str | None = None
    node: str | None = None  # the node running it (aegisd/cluster): only that node resumes it after a restart


def check_graph(stages: list[StageSpec]) -> None:
    """Unique names, known dependencies, no cycles. Raises ValidationError saying what is wrong."""
    names = [stage_name(i, s) for i, s in enumerate(stages)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError(f"duplicate stage names: {', '.join(dupes)}")
    known = set(names)
    for name, s in zip(names, stages, strict=True):
        unknown = [d for d in s.dependsOn if d not in known]
        if unknown:
            raise ValidationError(f"stage {name!r} depends on unknown stage(s): {', '.join(unknown)}")
        if name in s.dependsOn:
            raise ValidationError(f"stage {name!r} depends on itself")
    deps = {name: set(s.dependsOn) for name, s in zip(names, stages, strict=True)}
    done: set[str] = set()
    while len(done) < len(deps):
        ready = [n for n, d in deps.items() if n not in done and d <= done]
        if not ready:
            cycle = sorted(n for n in deps if n not in done)
            raise ValidationError(f"the stages' dependencies form a cycle among: {', '.join(cycle)}")
        done.update(ready)


def ready_stages(p: PipelineRecord) -> list[StageState]:
    completed = {s.name for s in p.stages if s.status == "completed"}
    return [s for s in p.stages if s.status == "pending" and set(s.dependsOn) <= completed]


_dec = msgspec.json.Decoder(PipelineRecord)


# How a stage's session comes to be: the path of session.create (aegisd/ops/_sessions.py create_session: audit
# record, workDir checks, quotas), handed in by the composition root, since features do not import operations.
StageSessions = Callable[["PipelineRecord", StageState], Awaitable["SessionRecord"]]


def _read_legacy(directory: Path) -> list[PipelineRecord]:
    """An earlier version's pipelines: one <id>.json each in <state>/pipelines/."""
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            out.append(_dec.decode(path.read_bytes()))
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("pipelines.unreadable", file=str(path), error=str(exc))
    return out


class PipelineManager:
    def __init__(self, *, sessions: SessionManager, bus: EventBus, verifier: Verifier, collection: Collection,
                 legacy_dir: Path | None = None, default_timeout_ms: int = 0,
                 create_session: StageSessions | None = None) -> None:
        self.sessions = sessions
        self.create_session = create_session
        self.bus = bus
        self.verifier = verifier
        self._nursery: trio.Nursery | None = None
        self.collection = collection
        self.legacy_dir = legacy_dir  # an earlier version's <state>/pipelines/, moved into the store at start
        self.records: dict[str, PipelineRecord] = {}
        self.default_timeout_ms = default_timeout_ms
        self._verdicts: dict[str, dict[str, Any]] = {}  # session id -> verification result not yet handled
        self.driving: set[str] = set()  # the pipelines this daemon runs (their records are its own, never reloaded)
        self.node_id: str | None = None  # this node (aegisd/cluster): it resumes its own pipelines only

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the pipeline tasks; loads and resumes stored pipelines. Cancel with :meth:`stop`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.load()
            task_status.started()
            await trio.sleep_forever()

    def stop(self) -> None:
        """Daemon shutdown: stop driving pipelines (their state is kept; the next daemon resumes them)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ---- persistence ---------------------------------------------------------------------------
    async def _save(self, p: PipelineRecord) -> None:
        p.updatedAt = now_ms()
        await self.collection.put(p.id, msgspec.to_builtins(p))
        self.bus.publish(p.id, Pipeline(status=p.status, currentStage=p.currentStage,
                                        stages={s.name: s.status for s in p.stages}))

    async def load(self) -> None:
        if self.legacy_dir is not None:
            await migrate_legacy(self.legacy_dir, _read_legacy, self._put_all)
        docs = await self.collection.list()
        loaded = []
        for key, doc in docs.items():
            try:
                loaded.append(msgspec.convert(doc, PipelineRecord))
            except msgspec.ValidationError as exc:
                log.warning("pipelines.unreadable", pipeline=key, error=str(exc))
        for p in sorted(loaded, key=lambda p: (p.createdAt, p.id)):
            self.records[p.id] = p
            if p.status == "running" and p.node in (None, self.node_id):
                for s in p.stages:
                    if s.status in ACTIVE:  # its turn was lost with the old daemon: run it again
                        s.status, s.sessionId = "pending", None
                self._start(p)
        log.info("pipelines.loaded", total=len(self.records))

    async def reload(self, pid: str | None = None) -> None:
        """Another node changed pipeline ``pid`` (None: any) in the store: show its stored state here (get and
        list read ``records``). A pipeline this daemon runs is never touched: its record here is the live one, and
        the store has it from this daemon. Does not start running anything. Raises the store's error
        (StoreUnavailable) for the caller to retry."""
        if pid is None:
            docs = await self.collection.list()
        else:
            doc = await self.collection.get(pid)
            docs = {} if doc is None else {pid: doc}
        found: dict[str, PipelineRecord] = {}
        for key, doc in docs.items():
            try:
                found[key] = msgspec.convert(doc, PipelineRecord)
            except msgspec.ValidationError as exc:
                log.warning("pipelines.unreadable", pipeline=key, error=str(exc))
        gone = [k for k in self.records if k not in found] if pid is None else [] if pid in found else [pid]
        for key in gone:
            if key not in self.driving:
                self.records.pop(key, None)
        for key, p in sorted(found.items(), key=lambda kv: (kv[1].createdAt, kv[0])):
            if key not in self.driving:
                self.records[key] = p

    # ---- API -----------------------------------------------------------------------------------
    async def create(self, spec: PipelineSpec, *, owner: str | None, creator: str | None = None) -> PipelineRecord:
        spec = msgspec.structs.replace(spec, stages=resolve_stages(spec))
        check_graph(spec.stages)
        policy = self.sessions.workdirs
        base = policy.validate(spec.workDir)
        stages = []
        for i, s in enumerate(spec.stages):
            wd = policy.validate(s.workDir) if s.workDir else base
            mode = s.permissionMode or ("bypassPermissions" if s.autoApprove else None)
            stages.append(StageState(name=stage_name(i, s), prompt=s.prompt, workDir=wd, dependsOn=list(s.dependsOn),
                                     permissionMode=mode, agent=s.agent,
                                     retries=s.retries if s.retries else (spec.maxRetries or 0),
                                     timeoutMs=s.timeoutMs or self.default_timeout_ms, verify=s.verify,
                                     verifyFixes=s.verifyFixes, verifyCriticalOnly=s.verifyCriticalOnly))
        ts = now_ms()
        p = PipelineRecord(id=str(uuid.uuid4()), name=spec.name, workDir=base, status="running", stages=stages,
                           createdAt=ts, updatedAt=ts, ownerKeyId=owner, creatorSessionId=creator, node=self.node_id)
        self.records[p.id] = p
        self.driving.add(p.id)  # its record here is the live one from now on (a reload meanwhile leaves it be)
        try:
            await self._save(p)
        except BaseException:
            del self.records[p.id]
            self.driving.discard(p.id)
            raise
        self._start(p)
        return p

    async def _put_all(self, records: list[PipelineRecord]) -> None:
        for p in records:
            await self.collection.put(p.id, msgspec.to_builtins(p))

    def get(self, pid: str) -> PipelineRecord:
        p = self.records.get(pid)
        if p is None:
            raise NotFound(f"pipeline {pid} not found")
        return p

    # ---- running -------------------------------------------------------------------------------
    def _start(self, p: PipelineRecord) -> None:
        assert self._nursery is not None
        self.driving.add(p.id)
        self._nursery.start_soon(self._drive, p)

    async def _drive(self, p: PipelineRecord) -> None:
        try:
            await self._run(p)
        finally:
            self.driving.discard(p.id)

    async def _start_stage(self, p: PipelineRecord, s: StageState) -> None:
        s.attempts += 1
        s.status, s.startedAt, s.stopReason, s.error = "running", now_ms(), None, None
        s.awaitTurn, s.fixes, s.verification = 1, 0, None
        try:
            if self.create_session is None:
                raise RuntimeError("no way to create sessions was given to the pipeline manager")
            rec = await self.create_session(p, s)
        except Exception as exc:  # noqa: BLE001 - the stage fails, the daemon does not
            self._stage_failed(p, s, f"could not start: {getattr(exc, 'message', exc)}")
            return
        s.sessionId = rec.id
        s.sessions = [*s.sessions, rec.id]
        if rec.status == State.CRASHED:
            self._stage_failed(p, s, f"agent failed to start: {rec.crash.reason if rec.crash else ''}")
        # the stage's session exists: the pipeline says so before anything else (a daemon stopped now must not
        # forget the attempt and start the stage a second time beside it)
        with trio.CancelScope(shield=True):
            await self._save(p)

    def _stage_failed(self, p: PipelineRecord, s: StageState, error: str) -> None:
        if s.attempts <= s.retries:
            s.status, s.error, s.sessionId = "pending", error, None  # retried in a new session
        else:
            s.status, s.error, s.completedAt = "failed", error, now_ms()

    async def _run(self, p: PipelineRecord) -> None:
        bus = self.bus
        sub = await bus.subscribe(maxsize=100_000)
        try:
            while p.status == "running":
                for s in ready_stages(p):
                    await self._start_stage(p, s)
                self._settle(p)
                running = [s for s in p.stages if s.status in ACTIVE]
                p.currentStage = running[0].name if running else None
                await self._save(p)
                if p.status != "running":
                    break
                deadlines = [s.startedAt / 1000 + s.timeoutMs / 1000 for s in running if s.timeoutMs and s.startedAt]
                wait = max(0.0, min(deadlines) - now_ms() / 1000) if deadlines else float("inf")
                with trio.move_on_after(wait):
                    await self._next_outcome(p, sub)
                if sub.closed:
                    if not sub.overflowed:
                        return  # the bus closed: the daemon is shutting down; the next one resumes us
                    sub = await bus.subscribe(maxsize=100_000)  # fell behind: states are re-read above
                self._check_timeouts(p)
        except Exception as exc:  # a bug here fails this pipeline, never the daemon
            log.exception("pipeline.internal_error", pipeline=p.id)
            p.status, p.error, p.completedAt = "failed", f"internal error: {exc!r}", now_ms()
            await self._save(p)
        finally:
            sub.close()
        log.info("pipeline.finished", pipeline=p.id, status=p.status)

    async def _next_outcome(self, p: PipelineRecord, sub: Any) -> None:
        """Wait until a running stage's session finishes a turn or ends, and record it."""
        by_session = {s.sessionId: s for s in p.stages if s.status in ACTIVE and s.sessionId}
        # outcomes that happened before we listened (e.g. a very fast turn)
        for sid, s in by_session.items():
            rec = self.sessions.records.get(sid)
            runner = self.sessions.runners.get(sid)
            if rec is None:
                continue
            if s.status == "verifying":
                if sid in self._verdicts:
                    await self._verdict(p, s, self._verdicts.pop(sid))
                    return
                continue
            if rec.status in (State.COMPLETED, State.KILLED, State.CRASHED):
                await self._finish_stage(p, s, None, ended=rec.status.value)
                return
            if rec.status == State.IDLE and rec.turns >= s.awaitTurn and runner is not None and not runner.busy:
                await self._finish_stage(p, s, rec.stopReason)
                return
        async for ev in sub:
            stage = by_session.get(ev.sessionId)
            if stage is None:
                continue
            match payload(ev):
                case Verification(status=status) if stage.status == "verifying" and status != "running":
                    await self._verdict(p, stage, self._verdicts.pop(ev.sessionId, ev.data))
                    return
                case Turn(turn=turn, stopReason=stop) if stage.status == "running":
                    runner = self.sessions.runners.get(ev.sessionId)
                    if (runner is not None and runner.busy) or turn < stage.awaitTurn:
                        continue
                    await self._finish_stage(p, stage, stop)
                    return
                case Ended(status=status):
                    await self._finish_stage(p, stage, None, ended=str(status.value))
                    return

    async def _finish_stage(self, p: PipelineRecord, s: StageState, stop: str | None, *,
                            ended: str | None = None) -> None:
        s.stopReason = stop
        if ended is None and stop == "end_turn" and s.verify and s.sessionId:
            s.status = "verifying"
            assert self._nursery is not None
            self._nursery.start_soon(self._verify, s.sessionId, s.verifyCriticalOnly)
        elif ended is None and stop == "end_turn":
            s.status, s.completedAt = "completed", now_ms()
            await self._close(s.sessionId, State.COMPLETED)
        else:
            why = f"session {ended}" if ended else f"turn ended with {stop}"
            self._stage_failed(p, s, why)
            await self._close(s.sessionId, State.KILLED)

    async def _verify(self, sid: str, critical_only: bool) -> None:
        """Run the checks for a stage's session; the verdict is kept here and announced by the `verification`
        event that wakes the pipeline."""
        from aegisd.core.errors import AegisError

        rec = self.sessions.records.get(sid)
        try:
            if rec is None:
                raise NotFound(f"session {sid} is gone")
            self._verdicts[sid] = await self.verifier.run(rec, critical_only=critical_only)
        except AegisError as exc:
            failed = Verification(status="failed", steps=[], ok=False, summary=f"could not verify: {exc.message}")
            self._verdicts[sid] = failed.to_data()
            self.bus.publish(sid, failed)

    async def _verdict(self, p: PipelineRecord, s: StageState, result: dict[str, Any]) -> None:
        from aegisd.features.verify import fix_prompt

        s.verification = {"ok": bool(result.get("ok")), "summary": result.get("summary"),
                          "steps": [{"name": x.get("name"), "ok": x.get("ok")} for x in result.get("steps") or []]}
        sid = s.sessionId
        if result.get("ok"):
            s.status, s.completedAt = "completed", now_ms()
            await self._close(sid, State.COMPLETED)
            return
        rec = self.sessions.records.get(sid or "")
        if s.fixes < s.verifyFixes and rec is not None and sid and result.get("steps"):
            s.fixes += 1
            s.status, s.awaitTurn = "running", rec.turns + 1
            try:
                await self.sessions.command(sid, "send", text=fix_prompt(result))
                return
            except Exception as exc:  # noqa: BLE001 - the session may have died meanwhile
                self._stage_failed(p, s, f"could not hand the failed checks back: {getattr(exc, 'message', exc)}")
        else:
            self._stage_failed(p, s, f"verification failed after {s.fixes} fix(es): {result.get('summary')}")
        await self._close(sid, State.KILLED)

    async def _close(self, sid: str | None, status: State) -> None:
        if sid and sid in self.sessions.runners:
            try:
                await self.sessions.end(sid, status)
            except Exception:  # noqa: BLE001 - it may have ended meanwhile
                pass

    def _check_timeouts(self, p: PipelineRecord) -> None:
        now = now_ms()
        for s in p.stages:
            if s.status in ACTIVE and s.timeoutMs and s.startedAt and now - s.startedAt >= s.timeoutMs:
                sid = s.sessionId
                self._stage_failed(p, s, f"timed out after {s.timeoutMs} ms")
                assert self._nursery is not None
                self._nursery.start_soon(self._close, sid, State.KILLED)

    def _settle(self, p: PipelineRecord) -> None:
        if any(s.status == "failed" for s in p.stages):
            for s in p.stages:
                if s.status == "pending":
                    s.status = "skipped"
            if not any(s.status in ACTIVE for s in p.stages):
                failed = next(s for s in p.stages if s.status == "failed")
                p.status, p.error, p.completedAt = "failed", f"stage {failed.name}: {failed.error}", now_ms()
        elif all(s.status == "completed" for s in p.stages):
            p.status, p.completedAt = "completed", now_ms()


def default_stage_timeout() -> int:
    try:
        return int(os.environ.get("AEGIS_PIPELINE_STAGE_TIMEOUT_MS") or 0)
    except ValueError:
        return 0
