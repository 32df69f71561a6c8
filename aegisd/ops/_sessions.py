"""Sessions: how one comes to be (create, spawn, fork, batches: all through :func:`create_session`), how it is
found (get, list, the legacy bare list, children, counts, health), prompted, switched (model, mode),
interrupted and ended. Param structs mirror the original Aegis request bodies (camelCase); unknown fields are
refused, as the original's strict schemas did."""

from __future__ import annotations

import math
from collections import Counter
from typing import Annotated, Any, cast

import msgspec
from msgspec import UNSET, UnsetType

from aegisd.core.config import PermissionMode
from aegisd.core.errors import Forbidden, ValidationError
from aegisd.core.models import SessionRecord, now_ms
from aegisd.core.states import LIVE, STATUS_FILTERS, State
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import (
    CreatedSession,
    Empty,
    IdParams,
    Page,
    Pagination,
    PromptDelivery,
    SessionRef,
    SessionView,
    Text,
    created_view,
    session_view,
)


# ---- params ------------------------------------------------------------------------------------------
class CreateParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    workDir: str | None = None  # required unless the template gives one
    templateId: str | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    label: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    permissionMode: PermissionMode | None = None
    autoApprove: bool | None = None
    model: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    agent: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    stallThresholdMs: Annotated[int, msgspec.Meta(ge=1000, le=3_600_000)] | None = None
    parentId: str | None = None
    reuse: Annotated[bool, msgspec.Meta(
        description="use an idle session of the same agent and owner in the same workDir if there is one")] = True
    # MCP servers the agent gets: "aegis" (this daemon's `ag mcp`, admins only) or names from the config
    mcpServers: Annotated[list[Annotated[str, msgspec.Meta(max_length=100)]], msgspec.Meta(max_length=10)] | None = None
    # accepted for compatibility with the original's clients; not used by ACP sessions
    env: dict[str, str] | None = None
    claudeCommand: str | None = None
    resumeSessionId: str | None = None
    memoryKeys: list[str] | None = None
    prd: str | None = None
    node: Annotated[str, msgspec.Meta(max_length=63, description=(
        "the cluster node to run it on (`ag nodes`); default: the least-loaded node that admits the workDir"
    ))] | None = None


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    page: Page = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    status: str | None = None
    project: str | None = None  # workDir substring
    # what the official clients send: ag-client's list_sessions(work_dir=, page_size=)
    workDir: str | None = None
    pageSize: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None


class SendParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    text: Text


class ModelParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ModeParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    mode: PermissionMode


class SpawnParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    workDir: str | None = None
    permissionMode: PermissionMode | None = None


class ForkParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None


class BatchCreateParams(msgspec.Struct, forbid_unknown_fields=True):
    sessions: Annotated[list[CreateParams], msgspec.Meta(min_length=1, max_length=50)]


class BatchDeleteParams(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[str], msgspec.Meta(max_length=100)] | None = None
    status: str | None = None


# ---- results -----------------------------------------------------------------------------------------
class SessionList(msgspec.Struct):
    sessions: list[SessionView]
    pagination: Pagination


class SessionHealth(msgspec.Struct):
    alive: bool
    windowExists: bool
    claudeRunning: bool
    paneCommand: str
    status: str
    hasTranscript: bool
    lastActivity: int
    lastActivityAgo: int
    sessionAge: int
    details: str
    pid: int | None
    queuedPrompts: int
    stderrTail: str | None


class SendResult(msgspec.Struct, kw_only=True):
    ok: bool
    delivered: bool
    queued: bool
    queuePosition: int | UnsetType = UNSET  # queued: its place in the queue
    attempts: int


class ModelSet(msgspec.Struct):
    ok: bool
    model: str | None
    models: list[str]


class ModeSet(msgspec.Struct):
    ok: bool
    permissionMode: str
    currentMode: str | None  # the agent's own mode id, when it has modes
    appliedBy: str  # agent (ACP session/set_mode) | daemon


class Interrupted(msgspec.Struct):
    ok: bool
    interrupted: bool


class Ended(msgspec.Struct):
    ok: bool
    id: str
    status: str


class ForkedSession(CreatedSession, kw_only=True):
    seededEntries: int  # transcript entries seeded into the first prompt (forkMethod "transcript")


class ChildSession(msgspec.Struct):
    id: str
    name: str
    windowName: str
    status: str
    createdAt: int


class Children(msgspec.Struct):
    children: list[ChildSession]


class SessionStats(msgspec.Struct):
    active: int
    byStatus: dict[str, int]
    totalCreated: int
    totalCompleted: int
    totalFailed: int


class BatchItem(msgspec.Struct):
    id: str
    name: str
    status: str
    promptDelivery: PromptDelivery


class BatchError(msgspec.Struct):
    index: int
    error: str
    code: str


class BatchCreated(msgspec.Struct):
    sessions: list[BatchItem]
    created: int
    failed: int
    errors: list[BatchError]


class KillError(msgspec.Struct):
    id: str
    error: str


class BatchDeleted(msgspec.Struct):
    deleted: int
    notFound: list[str]
    errors: list[KillError]


# ---- creating ----------------------------------------------------------------------------------------
async def create_session(ctx: OpContext, p: CreateParams, *, forked_from: str | None = None,
                         creator: tuple[str | None, str | None] | None = None,
                         audit: dict[str, Any] | None = None) -> tuple[SessionRecord, bool, dict[str, Any]]:
    """THE way a session comes to be, for session.create, session.spawn, session.fork and pipeline stages:
    the template fills what the call leaves out, memory entries prefix the prompt, the MCP servers are checked
    against the caller, the manager validates the workDir and applies the owner's quotas, and a new session is
    recorded in the audit log as ``session.create``. ``creator`` overrides ``ctx.creator()`` (a pipeline stage
    belongs to the pipeline's owner); ``audit`` adds to the audit record's detail. Returns (record, reused,
    prompt delivery)."""
    d = ctx.services
    if p.templateId:
        from aegisd.ops._templates import owned_template

        t = owned_template(ctx, p.templateId)
        fill = {k: getattr(t, k) for k in ("workDir", "prompt", "permissionMode", "autoApprove", "agent", "model",
                                            "stallThresholdMs") if getattr(p, k) is None and getattr(t, k) is not None}
        p = msgspec.structs.replace(p, **fill)
    if not p.workDir:
        raise ValidationError("workDir is required")
    if p.parentId:  # a child of a session this caller can see (by full id, as it is stored)
        p = msgspec.structs.replace(p, parentId=ctx.session(p.parentId).id)
    if p.memoryKeys and p.prompt and d.config.memoryBridge.get("enabled"):
        # the caller's own entries only (the new session's owner)
        p = msgspec.structs.replace(p, prompt=d.memory.context(p.memoryKeys, owner=ctx.owner_of()) + p.prompt)
    mode = p.permissionMode
    if mode is None and p.autoApprove:
        mode = "bypassPermissions"
    if p.mcpServers and "aegis" in p.mcpServers and ctx.principal.role != "admin":
        raise Forbidden("the aegis MCP server acts with the daemon's full rights, so only admins may attach it")
    owner, creator_session = creator if creator is not None else ctx.creator()
    rec, reused, delivery = await d.manager.create(
        workDir=p.workDir or "", name=p.name or p.label, prompt=p.prompt, permissionMode=mode, model=p.model,
        agent=p.agent, stallThresholdMs=p.stallThresholdMs, parentId=p.parentId,
        ownerKeyId=owner, reuse=p.reuse, mcpServers=p.mcpServers, creatorSessionId=creator_session,
        forkedFrom=forked_from)
    if not reused:
        detail: dict[str, Any] = {"workDir": rec.workDir, "agent": rec.agent, "mode": rec.permissionMode,
                                  "ownerKeyId": rec.ownerKeyId}
        if forked_from is not None:
            detail["forkedFrom"] = forked_from
        ctx.audit("session.create", session_id=rec.id, detail={**detail, **(audit or {})})
    return rec, reused, delivery


@op("session.create", CreateParams, result=CreatedSession, permission="create",
    summary="Create a session (or reuse an idle one in the same workDir)")
async def create(ctx: OpContext, p: CreateParams) -> CreatedSession:
    cluster = ctx.services.cluster
    if cluster is not None and not ctx.forwarded:
        work_dir = p.workDir
        if not work_dir and p.templateId:
            from aegisd.ops._templates import owned_template

            work_dir = owned_template(ctx, p.templateId).workDir
        url = await cluster.place(work_dir or "", p.node)
        if url is not None:  # another node runs it: the create is that node's (its answer is this one's)
            raw = msgspec.to_builtins(msgspec.structs.replace(p, node=cluster.node_of_url(url)))
            answer = await cluster.forward(url, "session.create", raw, ctx.principal, ctx.request_id)
            created = msgspec.convert(answer, CreatedSession)
            await cluster.refresh(created.id)
            return created
    rec, reused, delivery = await create_session(ctx, p)
    return cast(CreatedSession, created_view(rec, ctx.services.http_url, reused=reused, delivery=delivery))


@op("session.spawn", SpawnParams, result=CreatedSession, permission="create",
    summary="Create a child session (parentId set)")
async def spawn(ctx: OpContext, p: SpawnParams) -> CreatedSession:
    parent = ctx.session(p.id)
    mode = p.permissionMode or cast(PermissionMode, parent.permissionMode)
    params = CreateParams(workDir=p.workDir or parent.workDir, name=p.name or f"{parent.name}-child",
                          prompt=p.prompt, permissionMode=mode, agent=parent.agent, model=parent.model,
                          parentId=parent.id, reuse=False)
    return await create(ctx, params)


FORK_CONTEXT_CHARS = 50_000


@op("session.fork", ForkParams, result=ForkedSession, permission="create",
    summary="A new session that continues from this one: through ACP session/fork when the agent supports "
            "it (forkMethod \"acp\"), else seeded with this session's transcript (forkMethod \"transcript\")")
async def fork(ctx: OpContext, p: ForkParams) -> ForkedSession:
    src = ctx.session(p.id)
    mgr = ctx.services.manager
    # the session.create path (audit record, MCP servers checked against the caller, workDir, quotas);
    # prompt after it: the transcript seed needs to know how the agent forked
    params = CreateParams(workDir=src.workDir, name=p.name or f"{src.name}-fork",
                          permissionMode=cast(PermissionMode, src.permissionMode), agent=src.agent,
                          model=src.requestedModel, reuse=False, mcpServers=src.mcpServers or None)
    rec, _, _ = await create_session(ctx, params, forked_from=src.id)
    seeded = 0
    prompt = p.prompt
    if rec.forkMethod == "transcript":
        seed, seeded = await _fork_seed(ctx, src)
        prompt = seed + "\n\n" + (p.prompt or "Continue from there.")
    delivery: dict[str, Any] = {"delivered": False, "attempts": 0}
    runner = mgr.runners.get(rec.id)
    if prompt and runner is not None:
        res = await runner.command("send", text=prompt)
        delivery = {"delivered": res["delivered"], "attempts": res["attempts"], "queued": res["queued"]}
    return cast(ForkedSession, created_view(
        rec, ctx.services.http_url, reused=False, delivery=delivery, cls=ForkedSession,
        overrides={"forkedFrom": src.id, "forkMethod": rec.forkMethod or "transcript"}, seededEntries=seeded))


async def _fork_seed(ctx: OpContext, src: SessionRecord) -> tuple[str, int]:
    """The source's recent conversation as a first prompt, newest entries kept within FORK_CONTEXT_CHARS."""
    lines: list[str] = []
    size = 0
    for e in reversed(await ctx.services.store.read_transcript(src.id, 0, None)):
        if e.contentType not in ("text", "tool_use", "tool_result", "tool_error", "plan"):
            continue
        line = f"{e.role}: {e.text}" if e.contentType == "text" else f"{e.role} [{e.contentType}]: {e.text}"
        if size + len(line) > FORK_CONTEXT_CHARS:
            break
        lines.append(line)
        size += len(line)
    lines.reverse()
    return (f"This session continues an earlier session ({src.id}). Its conversation so far:\n\n"
            + "\n".join(lines)), len(lines)


@op("sessions.batch_create", BatchCreateParams, result=BatchCreated, permission="create",
    summary="Create up to 50 sessions")
async def batch_create(ctx: OpContext, p: BatchCreateParams) -> BatchCreated:
    done, errors = [], []
    for i, item in enumerate(p.sessions):
        try:
            s = await create(ctx, msgspec.structs.replace(item, reuse=False))
            done.append(BatchItem(id=s.id, name=s.name, status=s.status.value, promptDelivery=s.promptDelivery))
        except Exception as exc:  # noqa: BLE001 - reported per item
            errors.append(BatchError(index=i, error=getattr(exc, "message", str(exc)),
                                     code=getattr(exc, "code", "INTERNAL_ERROR")))
    return BatchCreated(sessions=done, created=len(done), failed=len(errors), errors=errors)


# ---- finding -----------------------------------------------------------------------------------------
@op("session.list", ListParams, result=SessionList, summary="List sessions, newest first")
def list_sessions(ctx: OpContext, p: ListParams) -> SessionList:
    states = None
    if p.status:
        states = STATUS_FILTERS.get(p.status)
        if states is None:
            raise ValidationError(f"invalid status {p.status!r}; use one of {', '.join(sorted(STATUS_FILTERS))}")
    recs = ctx.visible(ctx.services.manager.list(states))
    if p.project:
        recs = [r for r in recs if p.project in r.workDir]
    if p.workDir:
        recs = [r for r in recs if r.workDir == p.workDir or r.workDir.startswith(p.workDir.rstrip("/") + "/")]
    limit = p.pageSize or p.limit
    total = len(recs)
    start = (p.page - 1) * limit
    return SessionList(sessions=[session_view(r, ctx.services.http_url) for r in recs[start:start + limit]],
                       pagination=Pagination(page=p.page, limit=limit, total=total,
                                             totalPages=max(1, math.ceil(total / limit))))


@op("session.list_legacy", Empty, result=list[SessionView],
    summary="The original's legacy GET /sessions: a bare array of every session")
def list_legacy(ctx: OpContext, p: Empty) -> list[SessionView]:
    recs = ctx.visible(ctx.services.manager.list())
    return [session_view(r, ctx.services.http_url) for r in recs]


@op("session.get", IdParams, result=SessionView, summary="One session")
def get(ctx: OpContext, p: IdParams) -> SessionView:
    return session_view(ctx.session(p.id), ctx.services.http_url)


@op("session.children", IdParams, result=Children, summary="Sessions spawned from this one")
def children(ctx: OpContext, p: IdParams) -> Children:
    rec = ctx.session(p.id)
    kids = [r for r in ctx.visible(ctx.services.manager.list()) if r.parentId == rec.id]
    return Children(children=[ChildSession(id=k.id, name=k.name, windowName=k.name, status=k.status.value,
                                           createdAt=k.createdAt) for k in kids])


@op("session.stats", Empty, result=SessionStats, summary="Session counts by status")
def stats(ctx: OpContext, p: Empty) -> SessionStats:
    recs = ctx.visible(ctx.services.manager.records.values())
    by = Counter(r.status.value for r in recs)
    return SessionStats(active=sum(1 for r in recs if r.status in LIVE), byStatus=dict(by),
                        totalCreated=len(recs), totalCompleted=by.get("completed", 0),
                        totalFailed=by.get("crashed", 0) + by.get("killed", 0))


@op("session.health", IdParams, result=SessionHealth, summary="Health of one session")
async def session_health(ctx: OpContext, p: IdParams) -> SessionHealth:
    rec = ctx.session(p.id)
    runner = ctx.services.manager.runners.get(rec.id)
    alive = bool(runner and runner.alive)
    now = now_ms()
    details = {State.PENDING: "agent starting", State.IDLE: "waiting for a prompt",
               State.RUNNING: "working on a prompt", State.PERMISSION_PROMPT: "waiting for approve/reject",
               State.STALLED: "no agent activity for the stall threshold",
               State.COMPLETED: "finished normally", State.KILLED: "stopped through the API",
               State.CRASHED: (rec.crash.reason if rec.crash else "crashed")}[rec.status]
    return SessionHealth(
        alive=alive, windowExists=alive, claudeRunning=alive, paneCommand=rec.agent, status=rec.status.value,
        hasTranscript=rec.transcriptCount > 0, lastActivity=rec.lastActivity,
        lastActivityAgo=max(0, now - rec.lastActivity), sessionAge=max(0, now - rec.createdAt), details=details,
        pid=rec.pid, queuedPrompts=runner.queue_length if runner else 0,
        stderrTail=runner.stderr_tail()[-1000:] if runner else (rec.crash.stderrTail if rec.crash else None))


@op("sessions.health", Empty, result=dict[str, SessionHealth], summary="Health of every session")
async def bulk_health(ctx: OpContext, p: Empty) -> dict[str, SessionHealth]:
    out = {}
    for rec in ctx.visible(ctx.services.manager.records.values()):
        out[rec.id] = await session_health(ctx, IdParams(id=rec.id))
    return out


# ---- driving -----------------------------------------------------------------------------------------
@op("session.send", SendParams, result=SendResult, permission="send",
    summary="Send a prompt (queued if a turn is in flight)")
async def send(ctx: OpContext, p: SendParams) -> SendResult:
    rec = ctx.session(p.id)
    return SendResult(**await ctx.services.manager.command(rec.id, "send", text=p.text))


@op("session.set_model", ModelParams, result=ModelSet, permission="send",
    summary="Switch a live session's model (through the agent's model config option or session/set_model); "
            "400 INVALID_MODEL lists the models the agent offers")
async def set_model(ctx: OpContext, p: ModelParams) -> ModelSet:
    rec = ctx.session(p.id)
    return ModelSet(**await ctx.services.manager.command(rec.id, "set_model", model=p.model))


@op("session.set_mode", ModeParams, result=ModeSet, permission="approve",
    summary="Change a live session's permission mode: applied by the agent (ACP session/set_mode) when it "
            "offers that mode, by the daemon otherwise (appliedBy says which)")
async def set_mode(ctx: OpContext, p: ModeParams) -> ModeSet:
    rec = ctx.session(p.id)
    previous = rec.permissionMode
    result = ModeSet(**await ctx.services.manager.command(rec.id, "set_permission_mode", mode=p.mode))
    ctx.audit("session.mode", session_id=rec.id,
              detail={"mode": p.mode, "previous": previous, "appliedBy": result.appliedBy})
    return result


@op("session.interrupt", IdParams, result=Interrupted, permission="send",
    summary="Cancel the current turn (ACP session/cancel)")
async def interrupt(ctx: OpContext, p: IdParams) -> Interrupted:
    rec = ctx.session(p.id)
    return Interrupted(**await ctx.services.manager.command(rec.id, "interrupt"))


# ---- ending ------------------------------------------------------------------------------------------
async def _end(ctx: OpContext, p: IdParams, status: State, action: str) -> Ended:
    rec = ctx.session(p.id)
    await ctx.services.manager.end(rec.id, status)
    ctx.audit(action, session_id=rec.id)
    return Ended(ok=True, id=rec.id, status=rec.status.value)


@op("session.kill", IdParams, result=Ended, permission="kill", summary="Kill a session (status killed)")
async def kill(ctx: OpContext, p: IdParams) -> Ended:
    return await _end(ctx, p, State.KILLED, "session.kill")


@op("session.close", IdParams, result=Ended, permission="kill", summary="Close a session normally (status completed)")
async def close(ctx: OpContext, p: IdParams) -> Ended:
    return await _end(ctx, p, State.COMPLETED, "session.close")


@op("sessions.batch_delete", BatchDeleteParams, result=BatchDeleted, permission="kill",
    summary="Kill many sessions (by ids or status)")
async def batch_delete(ctx: OpContext, p: BatchDeleteParams) -> BatchDeleted:
    if not p.ids and not p.status:
        raise ValidationError("give ids or status")
    d = ctx.services
    targets: list[str] = []
    not_found: list[str] = []
    for ident in p.ids or []:
        try:
            targets.append(ctx.session(ident, act=True).id)
        except Exception:  # noqa: BLE001
            not_found.append(ident)
    if p.status:
        states = STATUS_FILTERS.get(p.status)
        if states is None:
            raise ValidationError(f"invalid status {p.status!r}")
        targets += [r.id for r in ctx.visible(d.manager.list(states)) if r.id not in targets
                    and ctx.can_act(r.id)]
    deleted, errors = 0, []
    for sid in targets:
        if d.manager.records[sid].status not in LIVE:
            continue
        try:
            rec = d.manager.records[sid]
            url = d.cluster.owner_url(rec) if d.cluster is not None and not ctx.forwarded else None
            if url is not None:  # another node runs it: the kill (and its audit record) is that node's
                assert d.cluster is not None
                await d.cluster.forward(url, "session.kill", {"id": sid}, ctx.principal, ctx.request_id)
                await d.cluster.refresh(sid)
            else:
                await d.manager.end(sid, State.KILLED)
                ctx.audit("session.kill", session_id=sid, detail={"batch": True})
            deleted += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(KillError(id=sid, error=getattr(exc, "message", str(exc))))
    return BatchDeleted(deleted=deleted, notFound=not_found, errors=errors)
