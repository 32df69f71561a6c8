"""The rest of the original's routes that make sense for ACP sessions: session history (store + audit),
the legacy permission policy (enforced here, unlike the original), stable back-paging of transcripts, the
legacy bare session list and slash-command discovery."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from aegisd.core.errors import ValidationError
from aegisd.core.states import LIVE, State
from aegisd.ops._registry import OpContext, op
from aegisd.ops._sessions import IdParams, SessionRef, session_view


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


# ---- history ---------------------------------------------------------------------------------------
HISTORY_STATUSES = ("active", "completed", "killed", "crashed", "ended", "unknown")


class HistoryParams(msgspec.Struct, forbid_unknown_fields=True):
    page: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    status: str | None = None  # active | completed | killed | crashed | ended | unknown
    ownerKeyId: str | None = None


@op("session.history", HistoryParams,
    summary="Every session this daemon has known, live or ended, newest first: from the session store and the "
            "audit log (source live | store | audit, combined with '+')")
async def history(ctx: OpContext, p: HistoryParams) -> dict[str, Any]:
    if p.status is not None and p.status not in HISTORY_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(HISTORY_STATUSES)}")
    d = ctx.services
    rows: dict[str, dict[str, Any]] = {}
    for rec in d.manager.records.values():
        final = "active" if rec.status in LIVE else rec.status.value
        rows[rec.id] = {"id": rec.id, "name": rec.name, "workDir": rec.workDir, "ownerKeyId": rec.ownerKeyId,
                        "createdAt": rec.createdAt, "endedAt": rec.endedAt, "lastSeenAt": rec.lastActivity,
                        "finalStatus": final, "endReason": rec.endReason,
                        "source": "live" if rec.status in LIVE else "store"}
    audit, _ = await _audit_sessions(ctx)
    for sid, info in audit.items():
        row = rows.get(sid)
        if row is None:
            rows[sid] = {"id": sid, "name": None, "workDir": info.get("workDir"), "ownerKeyId": info.get("ownerKeyId"),
                         "createdAt": info.get("createdAt"), "endedAt": info.get("endedAt"),
                         "lastSeenAt": info.get("lastSeenAt"),
                         "finalStatus": info.get("finalStatus", "unknown"), "endReason": None, "source": "audit"}
        else:
            row["source"] += "+audit"
    out = []
    for row in rows.values():
        known = row["id"] in d.manager.records
        if not (ctx.can_see(row["id"]) if known else ctx.owns(row["ownerKeyId"])):
            continue
        if p.ownerKeyId is not None and row["ownerKeyId"] != p.ownerKeyId:
            continue
        if p.status == "ended":
            if row["finalStatus"] in ("active", "unknown"):
                continue
        elif p.status is not None and row["finalStatus"] != p.status:
            continue
        out.append(row)
    out.sort(key=lambda r: (r["createdAt"] or 0, r["id"]), reverse=True)
    start = (p.page - 1) * p.limit
    total = len(out)
    return {"records": out[start:start + p.limit],
            "pagination": {"page": p.page, "limit": p.limit, "total": total,
                           "totalPages": max(1, -(-total // p.limit))}}


_ENDING = {"session.kill": "killed", "session.close": "completed"}


async def _audit_sessions(ctx: OpContext) -> tuple[dict[str, dict[str, Any]], int]:
    """What the audit log says about each session: created (when, by whom, where), ended (how)."""
    records = await ctx.services.audit.read_all()
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        sid = r.get("sessionId")
        action = r.get("action", "")
        if not sid or not action.startswith("session."):
            continue
        info = out.setdefault(sid, {})
        ts = r.get("ts")
        info["lastSeenAt"] = ts
        raw = r.get("detail")
        detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if action == "session.create":
            info.setdefault("createdAt", ts)
            info.setdefault("workDir", detail.get("workDir"))
            info.setdefault("ownerKeyId", detail.get("ownerKeyId"))
        elif action in _ENDING:
            info["endedAt"] = ts
            info["finalStatus"] = _ENDING[action]
    return out, len(records)


# ---- the legacy permission policy ------------------------------------------------------------------
class LegacyRule(msgspec.Struct, forbid_unknown_fields=True):
    ruleBehavior: str
    source: str = "api"
    toolName: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    commandPattern: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class LegacyPermissionsParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    rules: Annotated[list[LegacyRule], msgspec.Meta(max_length=100)] = []


@op("session.permissions.get", IdParams,
    summary="The original's legacy permission policy ([{source, ruleBehavior, toolName, commandPattern}])")
async def get_permissions(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    return {"permissionPolicy": rec.permissionPolicy or [], "permissionProfile": rec.permissionProfile}


@op("session.permissions.set", LegacyPermissionsParams, permission="approve",
    summary="Set the legacy permission policy (body: a JSON array of rules). Unlike the original, the rules are "
            "enforced: they become the session's permission profile, and what no rule matches is left to the "
            "permission mode")
async def set_permissions(ctx: OpContext, p: LegacyPermissionsParams) -> dict[str, Any]:
    from aegisd.core.permissions import PermissionProfile, ProfileRule, validate_profile

    rec = ctx.session(p.id)
    profile = PermissionProfile(defaultBehavior="mode", rules=[
        ProfileRule(tool=r.toolName or "*", behavior=r.ruleBehavior, pattern=r.commandPattern) for r in p.rules])
    validate_profile(profile)
    legacy = [msgspec.to_builtins(r) for r in p.rules]
    result: dict[str, Any] = await ctx.services.manager.command(
        rec.id, "set_profile", profile=msgspec.to_builtins(profile), legacy=legacy)
    ctx.audit("session.permission_profile", session_id=rec.id,
                            detail={"rules": len(profile.rules), "default": "mode", "legacy": True})
    return result


# ---- transcript back-paging ------------------------------------------------------------------------
class CursorParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    before_id: Annotated[int, msgspec.Meta(ge=1)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    role: str | None = None


CURSOR_SCAN = 500


@op("session.transcript.cursor", CursorParams,
    summary="Stable back-paging: the newest `limit` entries before `before_id` (all when absent), oldest first; "
            "entry ids never change, so pages do not shift while the session writes")
async def transcript_cursor(ctx: OpContext, p: CursorParams) -> dict[str, Any]:
    if p.role is not None and p.role not in ("user", "assistant", "system"):
        raise ValidationError("role must be user, assistant or system")
    d = ctx.services
    rec = ctx.session(p.id)
    end = rec.transcriptCount if p.before_id is None else min(p.before_id - 1, rec.transcriptCount)
    picked: list[Any] = []
    has_more = False
    while end > 0:  # entry id n sits at index n-1; scan backwards in chunks until the page is full
        start = max(0, end - CURSOR_SCAN)
        chunk = await d.store.read_transcript(rec.id, start, end - start)
        for e in reversed(chunk):
            if p.role is not None and e.role != p.role:
                continue
            if len(picked) == p.limit:
                has_more = True
                break
            picked.append(e)
        if has_more:
            break
        end = start
    picked.reverse()
    messages = []
    for e in picked:
        m = msgspec.to_builtins(e)
        m["_cursor_id"] = e.id
        messages.append(m)
    return {"messages": messages, "has_more": has_more,
            "oldest_id": picked[0].id if picked else None, "newest_id": picked[-1].id if picked else None}


# ---- legacy list and command discovery -------------------------------------------------------------
@op("session.list_legacy", Empty, summary="The original's legacy GET /sessions: a bare array of every session")
async def list_legacy(ctx: OpContext, p: Empty) -> list[dict[str, Any]]:
    recs = ctx.visible(ctx.services.manager.list())
    return [session_view(r, ctx.services.http_url) for r in recs]


@op("session.commands", IdParams, permission="send",
    summary="The slash commands the agent advertised (ACP available_commands_update); the original scraped "
            "them from the terminal")
async def discover_commands(ctx: OpContext, p: IdParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    return {"commands": [{"name": c.get("name", ""), "description": c.get("description", "")}
                         for c in rec.availableCommands], "live": rec.status not in (
                State.COMPLETED, State.KILLED, State.CRASHED)}
