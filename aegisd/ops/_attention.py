"""What needs a caller's attention, for callers that cannot hold a stream open (MCP tools, scripts, cron):
a bounded wait for a session to need attention, the events after an id (waiting up to a timeout for the first
one), and every permission request waiting for a decision across the caller's sessions."""

from __future__ import annotations

from typing import Annotated

import msgspec
import trio

from aegisd.core.errors import Unauthorized
from aegisd.core.models import Event, PendingPermission, SessionRecord
from aegisd.core.states import TERMINAL, State
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Empty, EventFrame, SessionRef, SessionView, session_busy, session_view

Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]


class WaitParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    timeoutSeconds: Annotated[Seconds, msgspec.Meta(description="give up after this long (timedOut: true)")] = 300.0


class PollParams(msgspec.Struct, forbid_unknown_fields=True):
    sessionId: Annotated[str, msgspec.Meta(
        description="one session's events (id or unique prefix); default: every session the caller sees")] | None = None
    afterId: Annotated[int, msgspec.Meta(
        ge=0, description="return the events after this id (the lastId of the previous call); default: from now "
                          "on")] | None = None
    timeoutSeconds: Annotated[float, msgspec.Meta(
        ge=0, le=600, description="how long to wait for a first event when none is there yet")] = 30.0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class SessionWait(SessionView, kw_only=True):
    timedOut: bool  # the timeout passed before the session needed attention


class EventsPage(msgspec.Struct):
    events: list[EventFrame]
    lastId: int  # pass it as afterId next time
    timedOut: bool  # no event came within the timeout


class PendingRequest(PendingPermission, kw_only=True):
    sessionId: str
    sessionName: str
    position: int  # 0: the request approve/reject decides now; others wait behind it


class PendingList(msgspec.Struct):
    pending: list[PendingRequest]
    total: int


def needs_attention(ctx: OpContext, rec: SessionRecord) -> bool:
    """Ended, waiting for a permission decision, stalled, or idle with nothing in flight or queued."""
    if rec.status in TERMINAL or rec.status in (State.PERMISSION_PROMPT, State.STALLED):
        return True
    if rec.status != State.IDLE:
        return False
    return not session_busy(ctx.services.manager.runners, rec)


class _Revocable:
    """Ends a wait when the caller's credential stops working (auth/_credentials.py), as streams end."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.why = ""

    def __call__(self, why: str) -> None:
        self.why = why
        if self.scope is not None:
            self.scope.cancel()

    def check(self) -> None:
        if self.why:
            raise Unauthorized(f"{self.why}; the wait is over")


@op("session.wait", WaitParams, result=SessionWait,
    summary="Wait until a session needs attention: its turn ended and nothing is queued (idle), it waits for a "
            "permission decision, it stalled, or it ended; or until timeoutSeconds (timedOut: true). Returns the "
            "session")
async def wait(ctx: OpContext, p: WaitParams) -> SessionWait:
    d = ctx.services
    rec = ctx.session(p.id)
    revoked = _Revocable()
    with trio.move_on_after(p.timeoutSeconds) as revoked.scope, d.credentials.watch(ctx.principal, revoked):
        while not needs_attention(ctx, rec):
            # subscribed before looking again, so no change slips between the look and the wait
            async with await d.bus.subscribe(session_id=rec.id) as sub:
                while not needs_attention(ctx, rec):
                    try:
                        await sub.__anext__()
                    except StopAsyncIteration:  # fell behind (overflow): subscribe again
                        break
    revoked.check()
    return session_view(rec, d.http_url, SessionWait, timedOut=not needs_attention(ctx, rec))  # type: ignore[no-any-return]


@op("events.poll", PollParams, result=EventsPage,
    summary="The events after afterId (of one session, or of every session the caller sees), up to limit; "
            "when there are none yet, waits up to timeoutSeconds for the first. lastId is the afterId of the "
            "next call")
async def poll(ctx: OpContext, p: PollParams) -> EventsPage:
    d = ctx.services
    sid = ctx.session(p.sessionId).id if p.sessionId else None
    last = d.bus.last_id if p.afterId is None else p.afterId
    out: list[Event] = []
    revoked = _Revocable()
    with trio.move_on_after(p.timeoutSeconds) as revoked.scope, d.credentials.watch(ctx.principal, revoked):
        async with await d.bus.subscribe(session_id=sid, after_id=last) as sub:
            while len(out) < p.limit:
                ev = sub.next_nowait()
                if ev is None:
                    if out:
                        break  # what was there already: no waiting for more
                    try:
                        ev = await sub.__anext__()
                    except StopAsyncIteration:
                        break
                # another key's sessions (and events of no session, for non-admins) are skipped, as in
                # events.follow; lastId only moves past what was delivered
                if sid is not None or (ctx.can_see(ev.sessionId) if ev.sessionId else True):
                    out.append(ev)
                    last = ev.id
    revoked.check()
    return EventsPage(events=out, lastId=last, timedOut=not out)


@op("permissions.pending", Empty, result=PendingList,
    summary="Every permission request waiting for a decision, across the sessions the caller sees, oldest "
            "first: each with its sessionId and requestId (position 0 of a session is the one its approve/reject "
            "decides now; the others wait behind it)")
async def pending(ctx: OpContext, p: Empty) -> PendingList:
    d = ctx.services
    found: list[tuple[int, str, int, SessionRecord, PendingPermission]] = []
    for rec in ctx.visible(d.manager.records.values()):
        runner = d.manager.runners.get(rec.id)
        if rec.status in TERMINAL:
            continue
        # another node's session (aegisd/cluster): its record holds the request its approve decides now
        waiting = runner.pending_permissions if runner is not None else \
            [rec.pendingPermission] if rec.pendingPermission is not None and rec.node is not None else []
        for pos, req in enumerate(waiting):
            found.append((req.since, rec.id, pos, rec, req))
    found.sort(key=lambda f: f[:3])
    items = [PendingRequest(**msgspec.structs.asdict(req), sessionId=rec.id, sessionName=rec.name, position=pos)
             for _, _, pos, rec, req in found]
    return PendingList(pending=items, total=len(items))
