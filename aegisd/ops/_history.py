"""Session history: every session this daemon has known, live or ended, from the session store and the
hash-chained audit log (which outlives a session's record)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from aegisd.core.errors import ValidationError
from aegisd.core.states import LIVE
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Pagination

# ---- history ---------------------------------------------------------------------------------------
HISTORY_STATUSES = ("active", "completed", "killed", "crashed", "ended", "unknown")


class HistoryParams(msgspec.Struct, forbid_unknown_fields=True):
    page: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    status: str | None = None  # active | completed | killed | crashed | ended | unknown
    ownerKeyId: str | None = None


class HistoryRow(msgspec.Struct):
    id: str
    name: str | None  # None: only the audit log knows the session
    workDir: str | None
    ownerKeyId: str | None
    createdAt: int | None
    endedAt: int | None
    lastSeenAt: int | None
    finalStatus: str  # active | completed | killed | crashed | unknown
    endReason: str | None
    source: str  # live | store | audit, combined with "+"


class History(msgspec.Struct):
    records: list[HistoryRow]
    pagination: Pagination


@op("session.history", HistoryParams, result=History,
    summary="Every session this daemon has known, live or ended, newest first: from the session store and the "
            "audit log (source live | store | audit, combined with '+')")
async def history(ctx: OpContext, p: HistoryParams) -> History:
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
    return History(records=[HistoryRow(**r) for r in out[start:start + p.limit]],
                   pagination=Pagination(page=p.page, limit=p.limit, total=total,
                                         totalPages=max(1, -(-total // p.limit))))


_ENDING = {"session.kill": "killed", "session.close": "completed"}


async def _audit_sessions(ctx: OpContext) -> tuple[dict[str, dict[str, Any]], int]:
    """What the audit log says about each session: created (when, by whom, where), ended (how)."""
    import trio

    records = await trio.to_thread.run_sync(ctx.services.audit.read_all)
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
