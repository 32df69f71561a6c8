"""Streams of events: one session's until it ends (or its turn does), or every session's the caller sees.
A follower that falls behind resumes after an ``overflow`` marker; a stream ends when the caller's credential
stops working. Each item is an event frame (``EventFrame``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec

from aegisd.core.errors import Unauthorized
from aegisd.core.events import Ended, Overflow, Turn, envelope, payload
from aegisd.core.models import now_ms
from aegisd.core.states import TERMINAL, State
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import EventFrame, SessionRef, session_busy


class FollowParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    afterId: int | None = None
    untilIdle: bool = False


class EventsParams(msgspec.Struct, forbid_unknown_fields=True):
    sessionId: str | None = None
    afterId: int | None = None



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


@op("session.follow", FollowParams, result=EventFrame, stream=True,
    summary="Stream a session's events until it ends (or, with untilIdle, until its turn ends)")
async def follow(ctx: OpContext, p: FollowParams) -> AsyncIterator[EventFrame]:
    d = ctx.services
    rec = ctx.session(p.id)
    if rec.status in TERMINAL and p.afterId is None:
        return
    here = rec.id in d.manager.runners or rec.node in (None, d.manager.node_id)
    if p.untilIdle and p.afterId is None:
        if (here and rec.id not in d.manager.runners) or (rec.status == State.IDLE
                                                          and not session_busy(d.manager.runners, rec)):
            return
    async with aclosing(_follow(ctx, rec.id, p.afterId)) as evs:
        async for ev in evs:
            yield ev
            match payload(ev):
                case Ended():
                    return
                case Turn() if p.untilIdle:
                    if here:
                        runner = d.manager.runners.get(rec.id)
                        if runner is None or not runner.busy:
                            return
                    elif d.cluster is not None:  # another node's: its record, as stored when the turn ended
                        now = await d.cluster.refresh(rec.id)
                        if now is None or not session_busy(d.manager.runners, now):
                            return


@op("events.follow", EventsParams, result=EventFrame, stream=True, summary="Stream events of all sessions, or of one")
async def events(ctx: OpContext, p: EventsParams) -> AsyncIterator[EventFrame]:
    sid = ctx.session(p.sessionId).id if p.sessionId else None
    async with aclosing(_follow(ctx, sid, p.afterId)) as evs:
        async for ev in evs:
            if sid is None and ev.sessionId and not ctx.can_see(ev.sessionId):
                continue
            yield ev
