"""More of the original's session and observability operations: stats, bulk health, summary, metrics,
latency, tools, children/spawn, slash commands, pane, screenshot, answer, batch, diagnostics, handshake."""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated, Any, cast

import msgspec

from aegisd import __version__
from aegisd.core.config import PermissionMode
from aegisd.core.errors import Conflict, ValidationError
from aegisd.core.models import SessionRecord, now_ms
from aegisd.core.states import LIVE, STATUS_FILTERS, State
from aegisd.features.metering import estimate_cost
from aegisd.ops._registry import REGISTRY, OpContext, op
from aegisd.ops._sessions import (
    CreateParams,
    IdParams,
    SessionRef,
    create,
    create_session,
    session_health,
    session_view,
)


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SpawnParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    workDir: str | None = None
    permissionMode: PermissionMode | None = None


class CommandParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    command: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]


class AnswerParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    questionId: str
    answer: str


class ScreenshotParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    url: str | None = None
    fullPage: bool = False
    width: Annotated[int, msgspec.Meta(ge=1, le=7680)] | None = None
    height: Annotated[int, msgspec.Meta(ge=1, le=4320)] | None = None


class BatchCreateParams(msgspec.Struct, forbid_unknown_fields=True):
    sessions: Annotated[list[CreateParams], msgspec.Meta(min_length=1, max_length=50)]


class BatchDeleteParams(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[str], msgspec.Meta(max_length=100)] | None = None
    status: str | None = None


class DiagnosticsParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class HandshakeParams(msgspec.Struct, forbid_unknown_fields=True):
    protocolVersion: str
    clientCapabilities: list[str] | None = None
    clientVersion: str | None = None


async def _entries(ctx: OpContext, sid: str) -> list[Any]:
    return await ctx.services.store.read_transcript(sid, 0, None)


@op("session.stats", Empty, summary="Session counts by status")
async def stats(ctx: OpContext, p: Empty) -> dict[str, Any]:
    recs = ctx.visible(ctx.services.manager.records.values())
    by = Counter(r.status.value for r in recs)
    return {"active": sum(1 for r in recs if r.status in LIVE), "byStatus": dict(by),
            "totalCreated": len(recs), "totalCompleted": by.get("completed", 0),
            "totalFailed": by.get("crashed", 0) + by.get("killed", 0)}


@op("sessions.health", Empty, summary="Health of every session")
async def bulk_health(ctx: OpContext, p: Empty) -> dict[str, Any]:
    out = {}
    for rec in ctx.visible(ctx.services.manager.records.values()):
        out[rec.id] = await session_health(ctx, IdParams(id=rec.id))
    return out


@op("session.summary", IdParams, summary="A condensed view: status and the last 20 entries")
async def summary(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    start = max(0, rec.transcriptCount - 20)
    last = await ctx.services.store.read_transcript(rec.id, start, 20)
    return {"sessionId": rec.id, "windowName": rec.name, "name": rec.name, "status": rec.status.value,
            "totalMessages": rec.transcriptCount,
            "messages": [{"role": e.role, "contentType": e.contentType, "text": e.text} for e in last],
            "createdAt": rec.createdAt, "lastActivity": rec.lastActivity, "permissionMode": rec.permissionMode}


@op("session.metrics", IdParams, summary="Per-session metrics: duration, messages, tool calls, approvals, tokens")
async def session_metrics(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    entries = await _entries(ctx, rec.id)
    kinds = Counter(e.contentType for e in entries)
    decisions = [e.text for e in entries if e.contentType == "permission_decision"]
    u = rec.tokenUsage
    end = rec.endedAt or now_ms()
    return {"sessionId": rec.id, "durationSec": round((end - rec.createdAt) / 1000, 3),
            "messages": sum(1 for e in entries if e.contentType == "text"), "turns": rec.turns,
            "toolCalls": kinds.get("tool_use", 0),
            "approvals": sum(1 for t in decisions if t.startswith("approved")),
            "rejections": sum(1 for t in decisions if t.startswith("rejected")),
            "autoApprovals": sum(1 for t in decisions if t.startswith("auto-approved")),
            "statusChanges": [],
            "tokenUsage": {"inputTokens": u.inputTokens, "outputTokens": u.outputTokens,
                           "cacheCreationTokens": u.cacheCreationTokens, "cacheReadTokens": u.cacheReadTokens,
                           "totalTokens": u.totalTokens,
                           "estimatedCostUsd": u.costUsd or estimate_cost(rec.model, u.inputTokens, u.outputTokens,
                                                                   u.cacheReadTokens, u.cacheCreationTokens)},
            "contextUsage": msgspec.to_builtins(rec.contextUsage) if rec.contextUsage else None}


@op("session.latency", IdParams, summary="Permission response latency of a session")
async def latency(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    entries = await _entries(ctx, rec.id)
    waits, opened = [], None
    for e in entries:
        if e.contentType == "permission_request":
            opened = e.timestamp
        elif e.contentType == "permission_decision" and opened is not None:
            waits.append(e.timestamp - opened)
            opened = None
    agg = {"min": min(waits), "max": max(waits), "avg": sum(waits) / len(waits), "count": len(waits)} \
        if waits else {"min": None, "max": None, "avg": None, "count": 0}
    return {"sessionId": rec.id, "realtime": {"permission_response_ms": waits[-1] if waits else None},
            "aggregated": {"permission_response_ms": agg}}


@op("session.tools", IdParams, summary="Tool usage of a session")
async def tools(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    uses = Counter(e.toolName or "tool" for e in await _entries(ctx, rec.id) if e.contentType == "tool_use")
    return {"sessionId": rec.id, "tools": [{"name": n, "count": c} for n, c in uses.most_common()],
            "totalCalls": sum(uses.values())}


@op("session.children", IdParams, summary="Sessions spawned from this one")
async def children(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    kids = [r for r in ctx.visible(ctx.services.manager.list()) if r.parentId == rec.id]
    return {"children": [{"id": k.id, "name": k.name, "windowName": k.name, "status": k.status.value,
                          "createdAt": k.createdAt} for k in kids]}


@op("session.spawn", SpawnParams, summary="Create a child session (parentId set)", permission="create")
async def spawn(ctx: OpContext, p: SpawnParams) -> dict[str, Any]:
    parent = ctx.session(p.id)
    mode = p.permissionMode or cast(PermissionMode, parent.permissionMode)
    params = CreateParams(workDir=p.workDir or parent.workDir, name=p.name or f"{parent.name}-child",
                          prompt=p.prompt, permissionMode=mode, agent=parent.agent, model=parent.model,
                          parentId=parent.id, reuse=False)
    return await create(ctx, params)


@op("session.command", CommandParams, summary="Send a slash command (the agent's available_commands)",
    permission="send")
async def command(ctx: OpContext, p: CommandParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    text = p.command if p.command.startswith("/") else "/" + p.command
    name = text[1:].split()[0] if len(text) > 1 else ""
    known = {c.get("name") for c in rec.availableCommands}
    if known and name not in known:
        raise ValidationError(f"unknown command /{name}; the agent offers: "
                              f"{', '.join('/' + str(k) for k in sorted(known, key=str))}")
    res = await ctx.services.manager.command(rec.id, "send", text=text)
    return {"ok": True, "delivered": res["delivered"], "queued": res["queued"]}


@op("session.pane", IdParams, summary="A plain-text rendering of the recent transcript (for tmux-era clients)")
async def pane(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    start = max(0, rec.transcriptCount - 40)
    lines = []
    for e in await ctx.services.store.read_transcript(rec.id, start, 40):
        prefix = {"user": "> ", "assistant": ""}.get(e.role, "# ")
        if e.contentType not in ("text",):
            prefix += f"[{e.contentType}] "
        lines.append(prefix + e.text)
    if rec.pendingPermission is not None:
        lines.append(f"? Allow {rec.pendingPermission.toolTitle}? (approve / reject)")
    return {"pane": "\n".join(lines), "uiState": rec.status.value}


@op("session.screenshot", ScreenshotParams, permission="send",
    summary="PNG screenshot (base64) of a web page, such as the session's dev server, in headless Chromium; "
            "501 without a browser")
async def screenshot(ctx: OpContext, p: ScreenshotParams) -> dict[str, Any]:
    from aegisd.browser import screenshot as shots

    ctx.session(p.id)
    if not p.url:
        raise ValidationError("url is required")
    browser = shots.find_browser(ctx.services.environ)
    if browser is None:
        raise shots.unavailable(ctx.services.environ)
    pr = ctx.principal
    # the daemon's own listeners are refused to every screenshot; loopback only to a trusted caller
    reach = await shots.Reach.build(p.url, trusted=pr.role == "admin" or pr.kind in ("local", "master"),
                                    daemon_urls=(ctx.services.http_url, *ctx.services.http_binds),
                                    loopback_ports=ctx.services.config.screenshotLoopbackPorts)
    width, height = p.width or 1280, p.height or 720
    async with ctx.services.screenshot_limiter:
        png, blocked, load_error = await shots.take(p.url, width=width, height=height, reach=reach,
                                                    browser=browser, lifeline=ctx.services.lifeline,
                                                    full_page=p.fullPage)
    ctx.services.manager.metrics.screenshots += 1
    return {**shots.encode(png), "url": p.url, "timestamp": now_ms(), "fullPage": p.fullPage,
            "blockedRequests": blocked, "loadError": load_error}


class VerifyParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    criticalOnly: bool | None = None  # only typecheck/build steps (default: the config's)


@op("session.verify", VerifyParams, permission="send",
    summary="Run the project's checks (type check, build, tests: configured or found from its files) in the "
            "session's workDir; 422 VERIFICATION_FAILED with the same result when one fails")
async def verify(ctx: OpContext, p: VerifyParams) -> dict[str, Any]:
    from aegisd.core.errors import VerificationFailed

    rec = ctx.session(p.id)
    out = await ctx.services.verifier.run(rec, critical_only=p.criticalOnly)
    ctx.audit("session.verify", session_id=rec.id, detail={"ok": out["ok"],
                                                                             "summary": out["summary"]})
    if not out["ok"]:
        raise VerificationFailed(out["summary"], details=out)
    return out


@op("session.answer", AnswerParams, summary="Answer a question the agent asked", permission="send")
async def answer(ctx: OpContext, p: AnswerParams) -> dict[str, Any]:
    ctx.session(p.id)
    raise Conflict(f"no pending question {p.questionId!r} on this session (ACP agents ask through permission "
                   "requests; use approve/reject)")


@op("sessions.batch_create", BatchCreateParams, summary="Create up to 50 sessions", permission="create")
async def batch_create(ctx: OpContext, p: BatchCreateParams) -> dict[str, Any]:
    done, errors = [], []
    for i, item in enumerate(p.sessions):
        try:
            s = await create(ctx, msgspec.structs.replace(item, reuse=False))
            done.append({"id": s["id"], "name": s["name"], "status": s["status"],
                         "promptDelivery": s["promptDelivery"]})
        except Exception as exc:  # noqa: BLE001 - reported per item
            errors.append({"index": i, "error": getattr(exc, "message", str(exc)),
                           "code": getattr(exc, "code", "INTERNAL_ERROR")})
    return {"sessions": done, "created": len(done), "failed": len(errors), "errors": errors}


@op("sessions.batch_delete", BatchDeleteParams, summary="Kill many sessions (by ids or status)", permission="kill")
async def batch_delete(ctx: OpContext, p: BatchDeleteParams) -> dict[str, Any]:
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
            await d.manager.end(sid, State.KILLED)
            ctx.audit("session.kill", session_id=sid, detail={"batch": True})
            deleted += 1
        except Exception as exc:  # noqa: BLE001
            errors.append({"id": sid, "error": getattr(exc, "message", str(exc))})
    return {"deleted": deleted, "notFound": not_found, "errors": errors}


@op("metrics", Empty, summary="Daemon metrics (JSON)")
async def metrics(ctx: OpContext, p: Empty) -> dict[str, Any]:
    d = ctx.services
    m = d.manager.metrics
    recs = list(d.manager.records.values())
    ended = [r for r in recs if r.endedAt]
    by = Counter(r.status.value for r in recs)
    return {"uptime": round(time.time() - d.started_at, 3),
            "sessions": {"total_created": d.manager.created_total, "currently_active": sum(
                1 for r in recs if r.status in LIVE), "completed": by.get("completed", 0),
                "failed": by.get("crashed", 0), "killed": by.get("killed", 0),
                "avg_duration_sec": round(sum((r.endedAt or 0) - r.createdAt for r in ended) / len(ended) / 1000, 3)
                if ended else 0, "by_state": dict(by)},
            "turns": m.turns, "prompts": m.prompts, "approvals": m.approvals, "rejections": m.rejections,
            "auto_approvals": m.auto_approvals, "auto_rejections": m.auto_rejections, "agent_crashes": m.crashes,
            "screenshots_taken": m.screenshots,
            "events": {"published": d.bus.published, "subscribers_dropped": d.bus.dropped_subscribers},
            "latency": {"permission_response_ms": m.permission_latency.summary(),
                        "turn_duration_ms": m.turn_duration.summary()}}


@op("diagnostics", DiagnosticsParams, summary="Recent problems (crashes), without personal data")
async def diagnostics(ctx: OpContext, p: DiagnosticsParams) -> dict[str, Any]:
    events = []
    recs = ctx.visible(ctx.services.manager.records.values())  # others' sessions are not a viewer's
    for r in sorted(recs, key=lambda r: r.endedAt or 0, reverse=True):
        if r.crash is not None:
            events.append({"event": "session_crashed", "level": "error", "component": "session",
                           "operation": r.endReason, "sessionId": r.id, "errorCode": r.endReason,
                           "timestamp": r.endedAt, "attributes": {"reason": r.crash.reason[:200],
                                                                  "exitCode": r.crash.exitCode,
                                                                  "signal": r.crash.signal, "agent": r.agent}})
        if len(events) >= p.limit:
            break
    return {"count": len(events), "events": events}


@op("tools", Empty, summary="Every operation this daemon offers")
async def list_tools(ctx: OpContext, p: Empty) -> dict[str, Any]:
    ordered = sorted(REGISTRY.values(), key=lambda o: o.name)
    items = [{"name": o.name, "description": o.summary, "category": o.name.split(".")[0],
              "permission": o.permission, "streaming": o.stream} for o in ordered]
    return {"tools": items, "categories": sorted({i["category"] for i in items}), "totalTools": len(items)}


SERVER_CAPABILITIES = ["session.create", "session.resume", "session.approve", "session.transcript",
                       "session.events.sse", "session.events.replay", "session.metrics", "rpc", "metrics",
                       "audit", "keys"]


@op("handshake", HandshakeParams, summary="Capability negotiation", permission="public")
async def handshake(ctx: OpContext, p: HandshakeParams) -> dict[str, Any]:
    try:
        major = int(p.protocolVersion.split(".")[0])
    except ValueError:
        raise ValidationError("protocolVersion must look like '1' or '1.2'") from None
    if major < 1:
        raise Conflict(f"client protocol {p.protocolVersion} is older than the minimum (1)")
    wanted = p.clientCapabilities or []
    return {"protocolVersion": "1", "serverVersion": __version__, "serverCapabilities": SERVER_CAPABILITIES,
            "negotiatedCapabilities": [c for c in wanted if c in SERVER_CAPABILITIES],
            "warnings": [f"unsupported capability: {c}" for c in wanted if c not in SERVER_CAPABILITIES],
            "compatible": True}


_ = session_view


class ProfileParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    defaultBehavior: str | None = None
    rules: list[Any] = []
    # the original TypeScript client's spec sends {profile: allow|deny|ask}: the default behaviour, no rules
    profile: str | None = None


@op("session.permission_profile.get", IdParams, summary="The permission rules the daemon enforces for a session")
async def get_profile(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    return {"permissionProfile": rec.permissionProfile}


@op("session.permission_profile.set", ProfileParams, permission="approve",
    summary="Set the permission rules (allow/deny/ask by tool kind or name, command/path globs, read-only, "
            "path and size constraints) the daemon enforces on the session's permission requests")
async def set_profile(ctx: OpContext, p: ProfileParams) -> dict[str, Any]:
    from aegisd.core.permissions import PermissionProfile, validate_profile

    rec = ctx.session(p.id)
    if p.profile is not None and p.defaultBehavior is not None and p.profile != p.defaultBehavior:
        raise ValidationError("give defaultBehavior or its alias profile, not two different values")
    default = p.defaultBehavior or p.profile or "ask"
    try:
        profile = msgspec.convert({"defaultBehavior": default, "rules": p.rules}, PermissionProfile)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid permission profile: {exc}") from None
    validate_profile(profile)
    result: dict[str, Any] = await ctx.services.manager.command(rec.id, "set_profile",
                                                              profile=msgspec.to_builtins(profile))
    ctx.audit("session.permission_profile", session_id=rec.id,
                            detail={"rules": len(profile.rules), "default": profile.defaultBehavior})
    return result


class ForkParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None


FORK_CONTEXT_CHARS = 50_000


@op("session.fork", ForkParams, permission="create",
    summary="A new session that continues from this one: through ACP session/fork when the agent supports "
            "it (forkMethod \"acp\"), else seeded with this session's transcript (forkMethod \"transcript\")")
async def fork(ctx: OpContext, p: ForkParams) -> dict[str, Any]:
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
    out = session_view(rec, ctx.services.http_url)
    out["reused"] = False
    out["promptDelivery"] = delivery
    out["forkedFrom"] = src.id
    out["forkMethod"] = rec.forkMethod or "transcript"
    out["seededEntries"] = seeded
    return out


async def _fork_seed(ctx: OpContext, src: SessionRecord) -> tuple[str, int]:
    """The source's recent conversation as a first prompt, newest entries kept within FORK_CONTEXT_CHARS."""
    lines: list[str] = []
    size = 0
    for e in reversed(await _entries(ctx, src.id)):
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


@op("webhooks.dead_letter", Empty, summary="Webhook deliveries that failed every attempt (kept across restarts); "
                                          "non-admins see their own sessions' only, with endpoints by host")
async def dead_letter(ctx: OpContext, p: Empty) -> list[dict[str, Any]]:
    from aegisd.notify.webhooks import log_url

    d = ctx.services
    out = []
    for item in d.webhooks.dlq:
        session = item.payload.get("session")
        sid = session.get("id") if isinstance(session, dict) else None
        if not (isinstance(sid, str) and ctx.can_see(sid)):
            continue
        entry: dict[str, Any] = msgspec.to_builtins(item)
        if ctx.principal.role != "admin":  # chat services keep the secret in the URL's path
            entry["endpoint"] = log_url(item.endpoint)
        out.append(entry)
    return out
