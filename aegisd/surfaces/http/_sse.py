"""Server-Sent Events: `GET /v1/events` (all sessions) and `GET /v1/sessions/{id}/events` (also `/stream`),
with the original Aegis payloads: `data: {json}` frames with an `id:` line, the event type inside the JSON
(no `event:` field, so `EventSource.onmessage` sees everything), a `connected` first frame, `heartbeat` frames
every 30 s, and `Last-Event-ID` (or `?lastEventId=`) replay. A subscriber that falls behind skips ahead with an
`overflow` frame and never slows the sessions or other subscribers. A stream opened with a credential that
stops working (a key revoked, expired or rotated past its grace, a dashboard sign-in ended) ends at once with a
`revoked` frame (aegisd/auth/_credentials.py)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from aegisd.core import events
from aegisd.core.errors import CapacityExceeded, RateLimited
from aegisd.core.models import Event, now_ms

if TYPE_CHECKING:
    from aegisd.ops._services import Services

HEARTBEAT_S = 30.0
BATCH_MAX = 256
SSE_BUFFER = 1024
# A stream written to less than `coalesce_s` ago waits out the rest of it before its next write, so at high
# event rates one write carries every event queued meanwhile (each write costs quart and hypercorn the same
# ~50 µs of CPU, whatever its size); at low rates, events go out at once. The window grows with the number of
# open streams, from COALESCE_MIN_S for one to COALESCE_MAX_S from 100 on: many subscribers at a high rate are
# what makes the writes add up.
COALESCE_MIN_S = 0.002
COALESCE_MAX_S = 0.018


def coalesce_s(streams: int) -> float:
    return min(COALESCE_MAX_S, COALESCE_MIN_S + (COALESCE_MAX_S - COALESCE_MIN_S) * (streams - 1) / 99)

# our event kind -> the original's per-session name and global name (both permission kinds were `approval`)
_NAMES = {events.StatusChanged: ("status", "session_status_change"), events.Message: ("message", "session_message"),
          events.PermissionRequested: ("approval", "session_approval"),
          events.PermissionDecided: ("approval", "session_approval"), events.Ended: ("ended", "session_ended"),
          events.Stall: ("stall", "session_stall"), events.Created: ("created", "session_created"),
          events.Verification: ("verification", "session_verification")}


_ENDED = events.Ended.NAME  # the session stream's last event


def _wire(ev: Event) -> tuple[str, str, dict[str, Any]]:
    """The original's per-session name, global name and `data` of an event (our extra fields kept alongside)."""
    typed = events.payload(ev)
    names = _NAMES.get(type(typed))
    per_session, global_name = names if names is not None else (ev.event, f"session_{ev.event}")
    match typed:
        case events.Message(entry=entry):
            out: dict[str, Any] = {"role": entry.role, "text": entry.text, "contentType": entry.contentType}
            if entry.toolName:
                out["tool_name"] = entry.toolName
            if entry.toolUseId:
                out["tool_id"] = entry.toolUseId
            out["entryId"] = entry.id
            return per_session, global_name, out
        case events.PermissionRequested(request=req):
            data = dict(ev.data)
            data.setdefault("prompt", f"{req.toolTitle} {json.dumps(req.rawInput)}"
                                      if req.rawInput not in (None, {}) else req.toolTitle)
            return per_session, global_name, data
        case events.PermissionDecided(toolTitle=title):
            data = {k: v for k, v in ev.data.items() if k != "by"}  # not in the original
            if title is not None:  # an automatic decision: the original repeated its title as the prompt
                data.setdefault("prompt", title)
            return per_session, global_name, data
        case _:
            return per_session, global_name, dict(ev.data)


def frame(ev: Event, *, scope: str) -> bytes:
    """The SSE frame of an event, encoded once however many subscribers receive it: kept on the bus's envelope
    (one object handed to every subscriber), so each subscriber gets the very same bytes."""
    key = "_sse_" + scope
    cached: bytes | None = ev.__dict__.get(key)
    if cached is None:
        cached = _encode_frame(ev, scope)
        ev.__dict__[key] = cached
    return cached


def _encode_frame(ev: Event, scope: str) -> bytes:
    per_session, global_name, data = _wire(ev)
    body = {"event": global_name if scope == "global" else per_session, "sessionId": ev.sessionId,
            "timestamp": ev.timestamp, "emittedAt": now_ms(), "id": ev.id, "data": data}
    return f"id: {ev.id}\n".encode() + b"data: " + msgspec.json.encode(body) + b"\n\n"


def _plain(body: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


class SseLimits:
    """Concurrent SSE connections, in total and per client IP."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.by_ip: dict[str, int] = {}
        self.count = 0

    def acquire(self, ip: str) -> None:
        if self.count >= self.total:
            raise CapacityExceeded(f"too many event streams ({self.total})", details={"reason": "global_limit"})
        if self.by_ip.get(ip, 0) >= self.per_ip:
            raise RateLimited(f"too many event streams from {ip} ({self.per_ip})",
                              details={"reason": "per_ip_limit"})
        self.count += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1

    def release(self, ip: str) -> None:
        self.count -= 1
        left = self.by_ip.get(ip, 1) - 1
        if left <= 0:
            self.by_ip.pop(ip, None)
        else:
            self.by_ip[ip] = left


async def stream(services: Services, *, session_id: str | None, after_id: int | None, limits: SseLimits, ip: str,
                 can_see: Any = None, principal: Any = None) -> AsyncGenerator[bytes, None]:
    """The frames of one stream. It ends with a `revoked` frame as soon as the credential that opened it stops
    working (``principal``'s: a key revoked, expired or rotated past its grace, a sign-in ended)."""
    scope = "session" if session_id else "global"
    revoked: list[str] = []  # why, once the credential ended
    live: list[Any] = []  # the current subscription: closing it wakes the wait for the next event

    def revoke(why: str) -> None:
        revoked.append(why)
        for sub in live:
            sub.close()

    try:
        with services.credentials.watch(principal, revoke) if principal is not None else nullcontext():
            first: dict[str, Any] = {"event": "connected", "timestamp": now_ms()}
            if session_id:
                first["sessionId"] = session_id
            else:
                first["data"] = {"activeSessions": len(services.manager.runners)}
            yield _plain(first)
            last = after_id
            last_write = -math.inf
            while not revoked:
                sub = await services.bus.subscribe(session_id=session_id, after_id=last, maxsize=SSE_BUFFER)
                live[:] = [sub]
                try:
                    while not revoked:
                        ev: Event | None = sub.next_nowait()  # queued during the last window: no wait
                        if ev is None:
                            with trio.move_on_after(HEARTBEAT_S) as timer:
                                try:
                                    ev = await sub.__anext__()  # cancel-safe: takes nothing until it returns
                                except StopAsyncIteration:
                                    break
                            if revoked:
                                break
                            if timer.cancelled_caught:
                                beat: dict[str, Any] = {"event": "heartbeat", "timestamp": now_ms()}
                                if session_id:
                                    beat["sessionId"] = session_id
                                yield _plain(beat)
                                continue
                            wait = last_write + coalesce_s(limits.count) - trio.current_time()
                            if wait > 0:
                                await trio.sleep(wait)  # events published meanwhile join this write
                        # what is queued goes out as one write: hypercorn's cost is per write, not per byte
                        batch: list[bytes] = []
                        ended = False
                        while ev is not None and len(batch) < BATCH_MAX:
                            last = ev.id
                            if can_see is None or can_see(ev.sessionId):
                                batch.append(frame(ev, scope=scope))
                            if session_id and ev.event == _ENDED:
                                ended = True
                                break
                            ev = sub.next_nowait()
                        if batch:
                            yield batch[0] if len(batch) == 1 else b"".join(batch)
                            last_write = trio.current_time()
                        if ended:
                            return
                        if ev is None and not revoked:
                            # at high rates the next events come within the window: sleeping it out first
                            # costs one wake-up per write, where waiting for an event and then the rest of the
                            # window costs two
                            await trio.sleep(coalesce_s(limits.count))
                finally:
                    sub.close()
                if revoked:
                    break
                if not sub.overflowed:
                    return  # the bus closed: the services is shutting down
                yield _plain({"event": "overflow", "timestamp": now_ms(), "sessionId": session_id or "",
                              "data": {"reason": "slow consumer", "resumedAfter": last}})
            yield _plain({"event": "revoked", "timestamp": now_ms(), "sessionId": session_id or "",
                          "data": {"reason": revoked[0]}})
    finally:
        limits.release(ip)
