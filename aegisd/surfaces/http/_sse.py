"""Server-Sent Events: `GET /v1/events` (all sessions) and `GET /v1/sessions/{id}/events` (also `/stream`),
with the original Aegis payloads: `data: {json}` frames with an `id:` line, the event type inside the JSON
(no `event:` field, so `EventSource.onmessage` sees everything), a `connected` first frame, `heartbeat` frames
every 30 s, and `Last-Event-ID` (or `?lastEventId=`) replay. A subscriber that falls behind skips ahead with an
`overflow` frame and never slows the sessions or other subscribers. A stream opened with a credential that
stops working (a key revoked, expired or rotated past its grace, a dashboard sign-in ended) ends at once with a
`revoked` frame (aegisd/auth/_credentials.py).

How the frames are written: each event's frame is encoded once and shared by every subscriber. On a plain
HTTP/1 connection (aegisd/surfaces/http/_direct.py) one fan-out task (:class:`Fanout`) writes every stream: a
publish rings it, it waits out a short window for sessions many streams read, then writes to each of their
streams everything queued in one system call, with no task switch per subscriber; a stream's own task sleeps
until a heartbeat is due or the fan-out hands it back (a full socket, the session's end, an overflow, a revoked
credential). Over TLS or HTTP/2 each stream's own task writes, coalescing what queued meanwhile."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog
import trio

from aegisd.core import events
from aegisd.core.errors import CapacityExceeded, RateLimited
from aegisd.core.models import Event, now_ms

if TYPE_CHECKING:
    from aegisd.bus import EventBus, Subscription
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.http")

HEARTBEAT_S = 30.0
SSE_BUFFER = 1024
# A stream its own task writes (TLS, HTTP/2) and wrote to less than `coalesce_s` ago waits out the rest of it
# before its next write, so at high event rates one write carries every event queued meanwhile (each write
# costs quart and hypercorn the same ~50 µs of CPU, whatever its size); at low rates, events go out at once.
# The window grows with the number of open streams, from COALESCE_MIN_S for one to COALESCE_MAX_S from 100 on:
# many subscribers at a high rate are what makes the writes add up.
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


# The fan-out task's window: the events of a session that many streams read wait this long, so that one write
# per stream carries everything published meanwhile (each write is a system call, whatever its size); a session
# read by a few streams gets its events written at once. From FANOUT_FROM streams on, the window grows with
# their number (those of the session and the global ones), to FANOUT_MAX_S from 100 on.
FANOUT_FROM = 5
FANOUT_MAX_S = 0.005
DOORBELL_MAX = 1 << 16


def fanout_s(streams: int) -> float:
    return 0.0 if streams < FANOUT_FROM else FANOUT_MAX_S * min(1.0, streams / 100)


class Out(Protocol):
    """Where a stream's bytes go (aegisd/surfaces/http/_direct.py). ``direct``: ``write_nowait`` and
    ``send_rest`` work (a plain HTTP/1 connection whose socket takes writes at once)."""

    direct: bool

    async def write(self, data: bytes) -> bool: ...  # False: the connection is gone

    def write_nowait(self, data: bytes) -> bytes | None: ...  # what the kernel did not take; None: gone

    async def send_rest(self, rest: bytes) -> bool: ...  # what write_nowait left, waiting for room


class Feed:
    """One stream's subscription: what is queued, drained into one write."""

    def __init__(self, sub: Subscription, out: Out, *, scope: str, session_id: str | None,
                 can_see: Callable[[str], bool] | None, last: int | None) -> None:
        self.sub = sub
        self.out = out
        self.scope = scope
        self.session_id = session_id
        self.can_see = can_see
        self.last = last
        self.ended = False  # the session's `ended` went out: the stream ends
        self.stopped = False  # the credential ended: nothing more goes out
        self.gone = False  # the connection closed
        self.rest = b""  # bytes the kernel did not take: the stream's task sends them (waiting for room)
        self.wake = trio.Event()  # the fan-out handed the stream back to its task

    def drain(self, first: Event | None = None) -> bytes:
        """The frames of ``first`` and everything queued, up to the session's end."""
        if self.stopped:
            return b""
        sub, batch = self.sub, []
        ev = first if first is not None else sub.next_nowait()
        while ev is not None:
            self.last = ev.id
            if self.can_see is None or self.can_see(ev.sessionId):
                batch.append(frame(ev, scope=self.scope))
            if self.session_id and ev.event == _ENDED:
                self.ended = True
                break
            ev = sub.next_nowait()
        return batch[0] if len(batch) == 1 else b"".join(batch)

    def flush(self) -> bool:
        """Write what is queued without waiting; False when the stream's task has to take over: the kernel did
        not take it all, the connection is gone, the session ended, the subscription closed (overflow, the bus
        closing) or the credential ended."""
        data = self.drain()
        if data:
            rest = self.out.write_nowait(data)
            if rest is None:
                self.gone = True
                return False
            if rest:
                self.rest = rest
                return False
        return not (self.ended or self.stopped or self.sub.closed)


class Fanout:
    """Writes every stream on a direct connection from one task: when events are published it waits out a short
    window (fanout_s), then writes to each stream of the sessions concerned (and each global stream) everything
    queued for it, in one `send` each. Streams' own tasks sleep meanwhile (until a heartbeat is due, or until
    this hands them back: a full socket, the end); a hundred subscribers cost a hundred system calls per window
    and no task switch. It learns which sessions have news from a subscription of its own (the doorbell); it
    runs while it has streams."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._feeds: dict[str | None, set[Feed]] = {}
        self.count = 0
        self._doorbell: Subscription | None = None
        self._running = False

    def add(self, feed: Feed, nursery: trio.Nursery) -> None:
        self._feeds.setdefault(feed.session_id, set()).add(feed)
        self.count += 1
        if not self._running:
            self._running = True
            nursery.start_soon(self._run)

    def remove(self, feed: Feed) -> None:
        feeds = self._feeds.get(feed.session_id)
        if feeds is None or feed not in feeds:
            return
        feeds.discard(feed)
        if not feeds:
            del self._feeds[feed.session_id]
        self.count -= 1
        if not self.count and self._doorbell is not None:
            self._doorbell.close()  # wakes the task, which ends

    def _flush(self, feeds: Iterable[Feed]) -> None:
        for feed in list(feeds):
            try:
                keep = feed.flush()
            except Exception as exc:  # one stream's fault (a frame, a visibility check) ends that stream alone
                log.exception("sse.write_failed", session_id=feed.session_id, error=repr(exc))
                feed.gone, keep = True, False
            if not keep:
                self.remove(feed)
                feed.wake.set()

    def _flush_all(self) -> None:
        for feeds in list(self._feeds.values()):
            self._flush(feeds)

    async def _run(self) -> None:
        try:
            while self.count:
                bell = await self._bus.subscribe(maxsize=DOORBELL_MAX)
                self._doorbell = bell
                try:
                    self._flush_all()  # what was published before the doorbell rang for it
                    await self._serve(bell)
                except StopAsyncIteration:  # no streams left, the doorbell overflowed, or the bus closed
                    pass
                except Exception as exc:  # never the app's nursery: the streams end, the daemon goes on
                    log.exception("sse.fanout_failed", error=repr(exc))
                    for feeds in list(self._feeds.values()):
                        for feed in list(feeds):
                            feed.gone = True
                            self.remove(feed)
                            feed.wake.set()
                finally:
                    bell.close()
                    self._doorbell = None
                self._flush_all()
        finally:
            self._running = False

    async def _serve(self, bell: Subscription) -> None:
        due: dict[str, float] = {}  # sessions with news: when their streams are written
        feeds = self._feeds
        while self.count:
            rang: Event | None = None
            if due:
                with trio.move_on_at(min(due.values())):
                    rang = await bell.__anext__()
            else:
                rang = await bell.__anext__()
            now = trio.current_time()
            while rang is not None:
                sid = rang.sessionId
                if sid not in due:
                    due[sid] = now + fanout_s(len(feeds.get(sid, ())) + len(feeds.get(None, ())))
                rang = bell.next_nowait()
            ready = [key for key, at in due.items() if at <= now]
            if ready:
                for key in ready:
                    del due[key]
                    self._flush(feeds.get(key, ()))
                self._flush(feeds.get(None, ()))


async def stream(out: Out, services: Services, fanout: Fanout, nursery: trio.Nursery | None, *,
                 session_id: str | None, after_id: int | None, limits: SseLimits, ip: str,
                 can_see: Callable[[str], bool] | None = None, principal: Any = None) -> None:
    """Write one stream to ``out``. It ends with a `revoked` frame as soon as the credential that opened it stops
    working (``principal``'s: a key revoked, expired or rotated past its grace, a sign-in ended). On a direct
    connection (and with a ``nursery`` for the fan-out task) the fan-out writes its events; else its own task
    does, coalescing as it goes."""
    scope = "session" if session_id else "global"
    revoked: list[str] = []  # why, once the credential ended
    live: list[Feed] = []  # the current subscription: closing it ends the wait for the next event

    def revoke(why: str) -> None:
        revoked.append(why)
        for feed in live:
            feed.stopped = True
            feed.sub.close()
            feed.wake.set()

    try:
        with services.credentials.watch(principal, revoke) if principal is not None else nullcontext():
            first: dict[str, Any] = {"event": "connected", "timestamp": now_ms()}
            if session_id:
                first["sessionId"] = session_id
            else:
                first["data"] = {"activeSessions": len(services.manager.runners)}
            if not await out.write(_plain(first)):
                return
            last = after_id
            while not revoked:
                sub = await services.bus.subscribe(session_id=session_id, after_id=last, maxsize=SSE_BUFFER)
                feed = Feed(sub, out, scope=scope, session_id=session_id, can_see=can_see, last=last)
                live[:] = [feed]
                if revoked:  # ended while subscribing
                    feed.stopped = True
                try:
                    if out.direct and nursery is not None:
                        await _fed(feed, fanout, nursery, session_id)
                    else:
                        await _written(feed, limits, session_id)
                finally:
                    fanout.remove(feed)
                    sub.close()
                last = feed.last
                if feed.gone or feed.ended:
                    return
                if revoked:
                    break
                if not sub.overflowed:
                    return  # the bus closed: the services is shutting down
                if not await out.write(_plain({"event": "overflow", "timestamp": now_ms(),
                                               "sessionId": session_id or "",
                                               "data": {"reason": "slow consumer", "resumedAfter": last}})):
                    return
            await out.write(_plain({"event": "revoked", "timestamp": now_ms(), "sessionId": session_id or "",
                                    "data": {"reason": revoked[0]}}))
    finally:
        limits.release(ip)


def _heartbeat(session_id: str | None) -> bytes:
    beat: dict[str, Any] = {"event": "heartbeat", "timestamp": now_ms()}
    if session_id:
        beat["sessionId"] = session_id
    return _plain(beat)


async def _fed(feed: Feed, fanout: Fanout, nursery: trio.Nursery, session_id: str | None) -> None:
    """A stream the fan-out task writes: this task writes what is queued when it starts (the replay), then
    sleeps until a heartbeat is due or the fan-out hands the stream back (a full socket, the end); returns when
    the subscription is done (ended, closed, revoked) or the connection is gone."""
    out = feed.out
    while True:
        while True:  # what the fan-out cannot do, this task does, waiting for room
            if feed.rest:  # before anything else: the bytes of a frame already partly sent
                rest, feed.rest = feed.rest, b""
                if not await out.send_rest(rest):
                    feed.gone = True
            if feed.gone or feed.ended or feed.stopped or feed.sub.closed:
                return
            if feed.flush():
                break
        feed.wake = trio.Event()
        fanout.add(feed, nursery)
        with trio.move_on_after(HEARTBEAT_S) as timer:  # one timer per heartbeat, none per event
            await feed.wake.wait()
        fanout.remove(feed)
        if timer.cancelled_caught and not await out.write(_heartbeat(session_id)):
            feed.gone = True
            return


async def _written(feed: Feed, limits: SseLimits, session_id: str | None) -> None:
    """A stream its own task writes (a connection that takes no direct writes: TLS, HTTP/2): a stream written
    to less than `coalesce_s` ago waits out the rest of it before its next write, so one write carries every
    event queued meanwhile."""
    out, sub = feed.out, feed.sub
    last_write = -math.inf
    pending: Event | None = None
    while True:
        data = feed.drain(pending)
        pending = None
        if data:
            if not await out.write(data):
                feed.gone = True
                return
            last_write = trio.current_time()
        if feed.ended or feed.stopped or sub.closed:
            return
        if data:
            # at high rates the next events come within the window: sleeping it out first costs one wake-up
            # per write, where waiting for an event and then the rest of the window costs two
            await trio.sleep(coalesce_s(limits.count))
            continue
        with trio.move_on_after(HEARTBEAT_S) as timer:
            try:
                pending = await sub.__anext__()  # cancel-safe: takes nothing until it returns
            except StopAsyncIteration:
                return
        if feed.stopped:
            return
        if timer.cancelled_caught:
            if not await out.write(_heartbeat(session_id)):
                feed.gone = True
                return
            continue
        wait = last_write + coalesce_s(limits.count) - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)  # events published meanwhile join this write
