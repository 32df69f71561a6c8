"""What a session said and did, read from its transcript: new entries since the last read, pages, stable
back-paging by entry id, a condensed summary, a plain-text pane (for tmux-era clients), and what is counted
from it (messages, tool calls, approvals, permission latency, tool usage)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from aegisd.core.errors import ValidationError
from aegisd.core.models import ContextUsage, PendingPermission, TranscriptEntry, now_ms
from aegisd.core.states import State
from aegisd.features.metering import estimate_cost
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import IdParams, Page, SessionRef


class TranscriptParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    page: Page = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    role: str | None = None


class CursorParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    before_id: Annotated[int, msgspec.Meta(ge=1)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    role: str | None = None


class ReadResult(msgspec.Struct, kw_only=True):
    messages: list[TranscriptEntry]
    status: str
    statusText: str
    interactiveContent: str | None
    pendingPermission: PendingPermission | UnsetType = UNSET


class TranscriptPage(msgspec.Struct):
    messages: list[TranscriptEntry]
    total: int
    page: int
    limit: int
    hasMore: bool


class CursorEntry(TranscriptEntry, kw_only=True):
    cursor_id: int = msgspec.field(name="_cursor_id")  # the entry's id, under the original's name


class CursorPage(msgspec.Struct):
    messages: list[CursorEntry]
    has_more: bool
    oldest_id: int | None
    newest_id: int | None


class SummaryMessage(msgspec.Struct):
    role: str
    contentType: str
    text: str


class SessionSummary(msgspec.Struct):
    sessionId: str
    windowName: str
    name: str
    status: str
    totalMessages: int
    messages: list[SummaryMessage]
    createdAt: int
    lastActivity: int
    permissionMode: str


class Pane(msgspec.Struct):
    pane: str
    uiState: str


class TokenTotals(msgspec.Struct):
    inputTokens: int
    outputTokens: int
    cacheCreationTokens: int
    cacheReadTokens: int
    totalTokens: int
    estimatedCostUsd: float


class SessionMetrics(msgspec.Struct):
    sessionId: str
    durationSec: float
    messages: int
    turns: int
    toolCalls: int
    approvals: int
    rejections: int
    autoApprovals: int
    statusChanges: list[Any]
    tokenUsage: TokenTotals
    contextUsage: ContextUsage | None


class Waits(msgspec.Struct):
    min: int | None
    max: int | None
    avg: float | None
    count: int


class LatestWait(msgspec.Struct):
    permission_response_ms: int | None


class AllWaits(msgspec.Struct):
    permission_response_ms: Waits


class SessionLatency(msgspec.Struct):
    sessionId: str
    realtime: LatestWait
    aggregated: AllWaits


class ToolCount(msgspec.Struct):
    name: str
    count: int


class ToolUsage(msgspec.Struct):
    sessionId: str
    tools: list[ToolCount]
    totalCalls: int


_STATUS_TEXT = {State.PENDING: "Starting the agent", State.IDLE: "Idle", State.RUNNING: "Working",
                State.PERMISSION_PROMPT: "Waiting for permission", State.STALLED: "Stalled",
                State.COMPLETED: "Completed", State.KILLED: "Killed", State.CRASHED: "Crashed"}


async def _entries(ctx: OpContext, sid: str) -> list[TranscriptEntry]:
    return await ctx.services.store.read_transcript(sid, 0, None)


@op("session.read", IdParams, result=ReadResult, summary="Transcript entries new since the last read")
async def read(ctx: OpContext, p: IdParams) -> ReadResult:
    d = ctx.services
    rec = ctx.session(p.id)
    start, end = rec.readOffset, rec.transcriptCount
    messages = await d.store.read_transcript(rec.id, start, end - start) if end > start else []
    if end != start:
        rec.readOffset = start + len(messages)
        await d.manager.save(rec)
    pending = rec.pendingPermission
    return ReadResult(messages=messages, status=rec.status.value, statusText=_STATUS_TEXT[rec.status],
                      interactiveContent=f"Permission requested: {pending.toolTitle}" if pending is not None else None,
                      pendingPermission=pending if pending is not None else UNSET)


@op("session.transcript", TranscriptParams, result=TranscriptPage, summary="Page through the whole transcript")
async def transcript(ctx: OpContext, p: TranscriptParams) -> TranscriptPage:
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
    return TranscriptPage(messages=messages, total=total, page=p.page, limit=p.limit,
                          hasMore=start + len(messages) < total)


CURSOR_SCAN = 500


@op("session.transcript.cursor", CursorParams, result=CursorPage,
    summary="Stable back-paging: the newest `limit` entries before `before_id` (all when absent), oldest first; "
            "entry ids never change, so pages do not shift while the session writes")
async def transcript_cursor(ctx: OpContext, p: CursorParams) -> CursorPage:
    if p.role is not None and p.role not in ("user", "assistant", "system"):
        raise ValidationError("role must be user, assistant or system")
    d = ctx.services
    rec = ctx.session(p.id)
    end = rec.transcriptCount if p.before_id is None else min(p.before_id - 1, rec.transcriptCount)
    picked: list[TranscriptEntry] = []
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
    messages = [CursorEntry(**msgspec.structs.asdict(e), cursor_id=e.id) for e in picked]
    return CursorPage(messages=messages, has_more=has_more, oldest_id=picked[0].id if picked else None,
                      newest_id=picked[-1].id if picked else None)


@op("session.summary", IdParams, result=SessionSummary, summary="A condensed view: status and the last 20 entries")
async def summary(ctx: OpContext, p: IdParams) -> SessionSummary:
    rec = ctx.session(p.id)
    start = max(0, rec.transcriptCount - 20)
    last = await ctx.services.store.read_transcript(rec.id, start, 20)
    return SessionSummary(sessionId=rec.id, windowName=rec.name, name=rec.name, status=rec.status.value,
                          totalMessages=rec.transcriptCount,
                          messages=[SummaryMessage(role=e.role, contentType=e.contentType, text=e.text) for e in last],
                          createdAt=rec.createdAt, lastActivity=rec.lastActivity, permissionMode=rec.permissionMode)


@op("session.pane", IdParams, result=Pane,
    summary="A plain-text rendering of the recent transcript (for tmux-era clients)")
async def pane(ctx: OpContext, p: IdParams) -> Pane:
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
    return Pane(pane="\n".join(lines), uiState=rec.status.value)


@op("session.metrics", IdParams, result=SessionMetrics,
    summary="Per-session metrics: duration, messages, tool calls, approvals, tokens")
async def session_metrics(ctx: OpContext, p: IdParams) -> SessionMetrics:
    rec = ctx.session(p.id)
    entries = await _entries(ctx, rec.id)
    kinds = Counter(e.contentType for e in entries)
    decisions = [e.text for e in entries if e.contentType == "permission_decision"]
    u = rec.tokenUsage
    end = rec.endedAt or now_ms()
    return SessionMetrics(
        sessionId=rec.id, durationSec=round((end - rec.createdAt) / 1000, 3),
        messages=sum(1 for e in entries if e.contentType == "text"), turns=rec.turns,
        toolCalls=kinds.get("tool_use", 0),
        approvals=sum(1 for t in decisions if t.startswith("approved")),
        rejections=sum(1 for t in decisions if t.startswith("rejected")),
        autoApprovals=sum(1 for t in decisions if t.startswith("auto-approved")),
        statusChanges=[],
        tokenUsage=TokenTotals(inputTokens=u.inputTokens, outputTokens=u.outputTokens,
                               cacheCreationTokens=u.cacheCreationTokens, cacheReadTokens=u.cacheReadTokens,
                               totalTokens=u.totalTokens,
                               estimatedCostUsd=u.costUsd or estimate_cost(rec.model, u.inputTokens, u.outputTokens,
                                                                           u.cacheReadTokens, u.cacheCreationTokens)),
        contextUsage=rec.contextUsage or None)


@op("session.latency", IdParams, result=SessionLatency, summary="Permission response latency of a session")
async def latency(ctx: OpContext, p: IdParams) -> SessionLatency:
    rec = ctx.session(p.id)
    entries = await _entries(ctx, rec.id)
    waits: list[int] = []
    opened = None
    for e in entries:
        if e.contentType == "permission_request":
            opened = e.timestamp
        elif e.contentType == "permission_decision" and opened is not None:
            waits.append(e.timestamp - opened)
            opened = None
    agg = Waits(min=min(waits), max=max(waits), avg=sum(waits) / len(waits), count=len(waits)) \
        if waits else Waits(min=None, max=None, avg=None, count=0)
    return SessionLatency(sessionId=rec.id, realtime=LatestWait(permission_response_ms=waits[-1] if waits else None),
                          aggregated=AllWaits(permission_response_ms=agg))


@op("session.tools", IdParams, result=ToolUsage, summary="Tool usage of a session")
async def tools(ctx: OpContext, p: IdParams) -> ToolUsage:
    rec = ctx.session(p.id)
    uses = Counter(e.toolName or "tool" for e in await _entries(ctx, rec.id) if e.contentType == "tool_use")
    return ToolUsage(sessionId=rec.id, tools=[ToolCount(name=n, count=c) for n, c in uses.most_common()],
                     totalCalls=sum(uses.values()))


