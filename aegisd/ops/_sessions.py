"""Session operations. Param structs mirror the original Aegis request bodies (camelCase); unknown fields
are refused, as the original's strict schemas did."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

import msgspec

from aegisd import PROTOCOL_VERSION, __version__
from aegisd.core.config import PermissionMode
from aegisd.core.errors import Forbidden, SessionNotFound, Unauthorized, ValidationError
from aegisd.core.events import Overflow, envelope
from aegisd.core.models import SessionRecord, now_ms
from aegisd.core.states import LIVE, STATUS_FILTERS, TERMINAL, State
from aegisd.ops._registry import OpContext, op

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
Page = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
SessionRef = Annotated[str, msgspec.Meta(description="session id, or a unique prefix of at least 4 characters")]


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


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


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    page: Page = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    status: str | None = None
    project: str | None = None  # workDir substring
    # what the official clients send: ag-client's list_sessions(work_dir=, page_size=)
    workDir: str | None = None
    pageSize: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None


class IdParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef


class SendParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    text: Text


class TranscriptParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    page: Page = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    role: str | None = None


class DecisionParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    optionId: Annotated[str, msgspec.Meta(
        description="an option of the pending request to pick (default: the least privilege one)")] | None = None
    # the pending request the caller's user saw (pendingPermission.requestId): when given and it is not the
    # one pending, 409 PERMISSION_REQUEST_MISMATCH and nothing is decided
    requestId: Annotated[str, msgspec.Meta(
        min_length=1, max_length=200,
        description="the request this decides (pendingPermission.requestId); if another one is pending, the "
                    "answer is PERMISSION_REQUEST_MISMATCH and nothing is decided")] | None = None


class FollowParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    afterId: int | None = None
    untilIdle: bool = False


class EventsParams(msgspec.Struct, forbid_unknown_fields=True):
    sessionId: str | None = None
    afterId: int | None = None


def session_view(rec: SessionRecord, base_url: str = "") -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(rec)
    data.pop("readOffset", None)
    data["label"] = rec.name
    if rec.status == State.PERMISSION_PROMPT:
        base = f"{base_url}/v1/sessions/{rec.id}"
        data["actionHints"] = {
            "approve": {"method": "POST", "url": f"{base}/approve", "description": "Approve the pending request"},
            "reject": {"method": "POST", "url": f"{base}/reject", "description": "Reject the pending request"},
        }
        if rec.pendingPermission is not None:  # the body that decides this very request and no other
            for hint in data["actionHints"].values():
                hint["body"] = {"requestId": rec.pendingPermission.requestId}
    return data


# ---- daemon ----------------------------------------------------------------------------------------
@op("hello", Empty, summary="Daemon and protocol versions")
async def hello(ctx: OpContext, p: Empty) -> dict[str, Any]:
    d = ctx.services
    out = {"daemon": "aegisd", "version": __version__, "protocol": PROTOCOL_VERSION, "pid": d.pid,
           "stateDir": str(d.config.state_path), "httpUrl": d.http_url, "socket": str(d.config.socket_path),
           "cgroups": str(d.cgroups.root) if d.cgroups is not None else None}
    if ctx.principal.kind == "agent":
        out["session"] = ctx.principal.session_id  # a tool can learn which session it is scoped to
    return out


@op("health", Empty, summary="Server health", permission="public")
async def health(ctx: OpContext, p: Empty) -> dict[str, Any]:
    d = ctx.services
    m = d.manager
    return {
        "status": "draining" if d.draining else "ok",
        "timestamp": now_ms(),
        "version": __version__,
        "platform": platform.system().lower(),
        "uptime": round(time.time() - d.started_at, 3),
        "sessions": {"active": sum(1 for r in m.records.values() if r.status in LIVE),
                     "total": len(m.records)},
        "pid": d.pid,
        "store": d.store.name,
    }


@op("daemon.stop", Empty, stream=True, permission="admin",
    summary="Stop the daemon as SIGTERM does (`ag stop`): one event {stopping, pid, httpUrl}, sent before it starts "
            "stopping; admins only, never a session's agent")
async def daemon_stop(ctx: OpContext, p: Empty) -> AsyncIterator[dict[str, Any]]:
    d = ctx.services
    ctx.audit("daemon.stop")
    # a stream, so that the answer is on the wire before the shutdown closes the connection: the surface sends
    # this event, then resumes the generator
    yield {"stopping": True, "pid": d.pid, "httpUrl": d.http_url}
    d.request_stop()


# ---- sessions --------------------------------------------------------------------------------------
@op("session.create", CreateParams, summary="Create a session (or reuse an idle one in the same workDir)",
    permission="create")
async def create(ctx: OpContext, p: CreateParams) -> dict[str, Any]:
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
    owner, creator = ctx.creator()
    rec, reused, delivery = await ctx.services.manager.create(
        workDir=p.workDir or "", name=p.name or p.label, prompt=p.prompt, permissionMode=mode, model=p.model,
        agent=p.agent, stallThresholdMs=p.stallThresholdMs, parentId=p.parentId,
        ownerKeyId=owner, reuse=p.reuse, mcpServers=p.mcpServers, creatorSessionId=creator)
    if not reused:
        ctx.audit("session.create", session_id=rec.id,
                                detail={"workDir": rec.workDir, "agent": rec.agent, "mode": rec.permissionMode,
                                        "ownerKeyId": rec.ownerKeyId})
    view = session_view(rec, ctx.services.http_url)
    view["reused"] = reused
    view["promptDelivery"] = delivery
    return view


@op("session.list", ListParams, summary="List sessions, newest first")
async def list_sessions(ctx: OpContext, p: ListParams) -> dict[str, Any]:
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
    return {"sessions": [session_view(r, ctx.services.http_url) for r in recs[start:start + limit]],
            "pagination": {"page": p.page, "limit": limit, "total": total,
                           "totalPages": max(1, math.ceil(total / limit))}}


@op("session.get", IdParams, summary="One session")
async def get(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    return session_view(ctx.session(p.id), ctx.services.http_url)


@op("session.health", IdParams, summary="Health of one session")
async def session_health(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    runner = ctx.services.manager.runners.get(rec.id)
    alive = bool(runner and runner.alive)
    now = now_ms()
    details = {State.PENDING: "agent starting", State.IDLE: "waiting for a prompt",
               State.RUNNING: "working on a prompt", State.PERMISSION_PROMPT: "waiting for approve/reject",
               State.STALLED: "no agent activity for the stall threshold",
               State.COMPLETED: "finished normally", State.KILLED: "stopped through the API",
               State.CRASHED: (rec.crash.reason if rec.crash else "crashed")}[rec.status]
    return {"alive": alive, "windowExists": alive, "claudeRunning": alive, "paneCommand": rec.agent,
            "status": rec.status.value, "hasTranscript": rec.transcriptCount > 0,
            "lastActivity": rec.lastActivity, "lastActivityAgo": max(0, now - rec.lastActivity),
            "sessionAge": max(0, now - rec.createdAt), "details": details, "pid": rec.pid,
            "queuedPrompts": runner.queue_length if runner else 0,
            "stderrTail": runner.stderr_tail()[-1000:] if runner else (rec.crash.stderrTail if rec.crash else None)}


@op("session.send", SendParams, summary="Send a prompt (queued if a turn is in flight)", permission="send")
async def send(ctx: OpContext, p: SendParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    result: dict[str, Any] = await ctx.services.manager.command(rec.id, "send", text=p.text)
    return result


_STATUS_TEXT = {State.PENDING: "Starting the agent", State.IDLE: "Idle", State.RUNNING: "Working",
                State.PERMISSION_PROMPT: "Waiting for permission", State.STALLED: "Stalled",
                State.COMPLETED: "Completed", State.KILLED: "Killed", State.CRASHED: "Crashed"}


@op("session.read", IdParams, summary="Transcript entries new since the last read")
async def read(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    d = ctx.services
    rec = ctx.session(p.id)
    start, end = rec.readOffset, rec.transcriptCount
    messages = await d.store.read_transcript(rec.id, start, end - start) if end > start else []
    if end != start:
        rec.readOffset = start + len(messages)
        await d.manager.save(rec)
    out: dict[str, Any] = {"messages": msgspec.to_builtins(messages), "status": rec.status.value,
                           "statusText": _STATUS_TEXT[rec.status], "interactiveContent": None}
    if rec.pendingPermission is not None:
        out["pendingPermission"] = msgspec.to_builtins(rec.pendingPermission)
        out["interactiveContent"] = f"Permission requested: {rec.pendingPermission.toolTitle}"
    return out


@op("session.transcript", TranscriptParams, summary="Page through the whole transcript")
async def transcript(ctx: OpContext, p: TranscriptParams) -> dict[str, Any]:
    d = ctx.services
    rec = ctx.session(p.id)
    if p.role is not None and p.role not in ("user", "assistant", "system"):
        raise ValidationError("role must be user, assistant or system")
    if p.role is None:
        total = rec.transcriptCount
        start = (p.page - 1) * p.limit
        messages = await d.store.read_transcript(rec.id, start, p.limit) if start < total else []
    else:
        everything = [e for e in await d.store.read_transcript(rec.id, 0, None) if e.role == p.role]
        total = len(everything)
        start = (p.page - 1) * p.limit
        messages = everything[start:start + p.limit]
    return {"messages": msgspec.to_builtins(messages), "total": total, "page": p.page, "limit": p.limit,
            "hasMore": start + len(messages) < total}


async def _decide(ctx: OpContext, p: DecisionParams, verb: str) -> dict[str, Any]:
    rec = ctx.session(p.id)
    result: dict[str, Any] = await ctx.services.manager.command(rec.id, verb, optionId=p.optionId,
                                                              requestId=p.requestId, by=ctx.principal.name)
    ctx.audit(f"permission.{verb}", session_id=rec.id,
                            detail={"optionId": result["optionId"], "requestId": result["requestId"]})
    return result


@op("session.approve", DecisionParams, summary="Approve the pending permission request", permission="approve")
async def approve(ctx: OpContext, p: DecisionParams) -> dict[str, Any]:
    return await _decide(ctx, p, "approve")


@op("session.reject", DecisionParams, summary="Reject the pending permission request", permission="reject")
async def reject(ctx: OpContext, p: DecisionParams) -> dict[str, Any]:
    return await _decide(ctx, p, "reject")


class ModelParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


@op("session.set_model", ModelParams, permission="send",
    summary="Switch a live session's model (through the agent's model config option or session/set_model); "
            "400 INVALID_MODEL lists the models the agent offers")
async def set_model(ctx: OpContext, p: ModelParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    result: dict[str, Any] = await ctx.services.manager.command(rec.id, "set_model", model=p.model)
    return result


class ModeParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    mode: PermissionMode


@op("session.set_mode", ModeParams, permission="approve",
    summary="Change a live session's permission mode: applied by the agent (ACP session/set_mode) when it "
            "offers that mode, by the daemon otherwise (appliedBy says which)")
async def set_mode(ctx: OpContext, p: ModeParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    previous = rec.permissionMode
    result: dict[str, Any] = await ctx.services.manager.command(rec.id, "set_permission_mode", mode=p.mode)
    ctx.audit("session.mode", session_id=rec.id,
                            detail={"mode": p.mode, "previous": previous, "appliedBy": result["appliedBy"]})
    return result


@op("session.interrupt", IdParams, summary="Cancel the current turn (ACP session/cancel)", permission="send")
async def interrupt(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    result: dict[str, Any] = await ctx.services.manager.command(rec.id, "interrupt")
    return result


async def _end(ctx: OpContext, p: IdParams, status: State, action: str) -> dict[str, Any]:
    rec = ctx.session(p.id)
    await ctx.services.manager.end(rec.id, status)
    ctx.audit(action, session_id=rec.id)
    return {"ok": True, "id": rec.id, "status": rec.status.value}


@op("session.kill", IdParams, summary="Kill a session (status killed)", permission="kill")
async def kill(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    return await _end(ctx, p, State.KILLED, "session.kill")


@op("session.close", IdParams, summary="Close a session normally (status completed)", permission="kill")
async def close(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    return await _end(ctx, p, State.COMPLETED, "session.close")


# ---- streams ---------------------------------------------------------------------------------------
FOLLOW_BUFFER = 4096  # events a follower may fall behind before it skips ahead


async def _follow(ctx: OpContext, session_id: str | None, after_id: int | None) -> AsyncGenerator[Any, None]:
    """Events from the bus; a subscriber that falls behind is dropped by the bus, and here it resubscribes
    from the last event it delivered, after an ``overflow`` marker saying how many events were skipped. Ends
    with 401 as soon as the caller's credential stops working (auth/_credentials.py)."""
    d = ctx.services
    last = after_id
    revoked: list[str] = []
    live: list[Any] = []

    def revoke(why: str) -> None:
        revoked.append(why)
        for sub in live:
            sub.close()  # wakes the wait for the next event

    with d.credentials.watch(ctx.principal, revoke):
        while True:
            sub = await d.bus.subscribe(session_id=session_id, after_id=last, maxsize=FOLLOW_BUFFER)
            live[:] = [sub]
            if revoked:  # while it subscribed
                sub.close()
            async with sub:
                async for ev in sub:
                    if revoked:
                        break
                    last = ev.id
                    yield ev
                if revoked:
                    raise Unauthorized(f"{revoked[0]}; the stream is closed")
                if not sub.overflowed:
                    return
            resumed = await d.bus.subscribe(session_id=session_id, after_id=last)
            first = resumed._replay[0].id if resumed._replay else d.bus.last_id + 1
            resumed.close()
            yield envelope(last or 0, session_id or "", now_ms(),
                           Overflow(reason="slow consumer", resumedAfter=last, firstAvailable=first))


@op("session.follow", FollowParams, stream=True,
    summary="Stream a session's events until it ends (or, with untilIdle, until its turn ends)")
async def follow(ctx: OpContext, p: FollowParams) -> AsyncIterator[dict[str, Any]]:
    d = ctx.services
    rec = ctx.session(p.id)
    if rec.status in TERMINAL and p.afterId is None:
        return
    if p.untilIdle and p.afterId is None:
        runner = d.manager.runners.get(rec.id)
        if runner is None or (rec.status == State.IDLE and not runner.busy):
            return
    async with aclosing(_follow(ctx, rec.id, p.afterId)) as evs:
        async for ev in evs:
            yield msgspec.to_builtins(ev)
            if ev.event == "ended":
                return
            if p.untilIdle and ev.event == "turn":
                runner = d.manager.runners.get(rec.id)
                if runner is None or not runner.busy:
                    return


@op("events.follow", EventsParams, stream=True, summary="Stream events of all sessions, or of one")
async def events(ctx: OpContext, p: EventsParams) -> AsyncIterator[dict[str, Any]]:
    sid = ctx.session(p.sessionId).id if p.sessionId else None
    async with aclosing(_follow(ctx, sid, p.afterId)) as evs:
        async for ev in evs:
            if sid is None and ev.sessionId and not ctx.can_see(ev.sessionId):
                continue
            yield msgspec.to_builtins(ev)


__all__ = ["SessionNotFound", "session_view"]
