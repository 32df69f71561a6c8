"""GET /v1/sessions/{id}/terminal: the original's live-terminal WebSocket, spoken over an ACP session.

There is no tmux pane to mirror, so the "terminal" is the transcript as text: on connect the recent pane
(`{type: "pane", content}`) and the status (`{type: "status", status}`), then the agent's words as they stream
(`{type: "stream", data}`), status changes, and `{type: "ended"}` before the server closes. The client sends
`{type: "input", text}` (a prompt; a lone Esc or Ctrl-C interrupts), `{type: "approve", requestId?}`,
`{type: "reject", requestId?}` and `{type: "resize", cols, rows}` (accepted, nothing to resize). A permission
request is shown as a `stream` frame that also carries its `requestId` (and the first `pane` frame carries the
pending one's as `pendingRequestId`): a client that sends it back decides that request and no other (409
PERMISSION_REQUEST_MISMATCH as an error frame when another is pending). Authentication as for SSE: a bearer header,
`?token=sse_…`, or, when neither is given, a first message `{type: "auth", token}` within 10 s. When that
credential stops working (key revoked, expired or rotated past its grace, sign-in ended), the server sends
`{type: "error", code: "UNAUTHORIZED"}` and closes with 4401."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from aegisd import ops
from aegisd.core import events
from aegisd.core.errors import AegisError, Unauthorized, ValidationError
from aegisd.core.input import decode_json
from aegisd.core.models import Event
from aegisd.core.states import TERMINAL

if TYPE_CHECKING:
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.terminal")

AUTH_TIMEOUT_S = 10.0
INTERRUPT_KEYS = ("\x1b", "\x03")  # Esc, Ctrl-C
MAX_MESSAGE = 200_000


def _error(exc: AegisError) -> str:
    return json.dumps({"type": "error", "code": exc.code, "error": exc.message})


async def refuse(ws: Any, exc: AegisError) -> None:
    """Tell the client why, then close (4000 + HTTP status, as WebSocket close codes go)."""
    await ws.send(_error(exc))
    await ws.close(4000 + exc.status, exc.message[:120])


def render(ev: Event) -> dict[str, Any] | None:
    """The terminal frame of a bus event (None: nothing to show)."""
    match events.payload(ev):
        case events.Chunk(contentType="text", text=text):
            return {"type": "stream", "data": text}
        case events.Message(entry=entry):
            role, kind, text = entry.role, entry.contentType, entry.text or ""
            if role == "user" and kind == "text":
                return {"type": "stream", "data": f"\n> {text}\n"}
            if kind in ("tool_use", "permission_request", "tool_error", "error"):
                return {"type": "stream", "data": f"\n# [{kind}] {text}\n"}
            return None
        case events.PermissionRequested(request=req):
            return {"type": "stream", "data": f"\n? Allow {req.toolTitle}? (approve / reject)\n",
                    "requestId": req.requestId}
        case events.StatusChanged(status=status):
            return {"type": "status", "status": status.value}
        case events.Turn():
            return {"type": "stream", "data": "\n"}
        case _:
            return None


async def serve(services: Services, ws: Any, sid: str, principal: ops.Principal | None, *,
                first_message_auth: Callable[[str], Awaitable[ops.Principal]], request_id: str, ip: str) -> None:
    await ws.accept()
    try:
        if principal is None:
            with trio.move_on_after(AUTH_TIMEOUT_S):
                raw = await ws.receive()
                try:
                    msg = decode_json(raw, what="the message") if len(raw) <= MAX_MESSAGE else None
                except ValidationError:
                    msg = None
                if not isinstance(msg, dict) or msg.get("type") != "auth" or not isinstance(msg.get("token"), str):
                    raise Unauthorized("send {type: 'auth', token} first, or connect with a bearer token")
                principal = await first_message_auth(msg["token"])
            if principal is None:
                raise Unauthorized(f"no authentication within {AUTH_TIMEOUT_S:.0f} s")
        ctx = ops.OpContext(services=services, principal=principal, request_id=request_id, surface="http", ip=ip)
        rec = ctx.session(sid)
    except AegisError as exc:
        await refuse(ws, exc)
        return
    revoked: list[str] = []
    with trio.CancelScope() as scope:
        def revoke(why: str) -> None:
            revoked.append(why)
            scope.cancel()

        with services.credentials.watch(principal, revoke):
            await _serve(ctx, ws, rec, principal)
    if revoked:  # the credential that opened it stopped working: so does the terminal
        log.info("terminal.revoked", session_id=rec.id, principal=principal.name, reason=revoked[0])
        await refuse(ws, Unauthorized(f"{revoked[0]}; the terminal is closed"))


async def _serve(ctx: ops.OpContext, ws: Any, rec: Any, principal: ops.Principal) -> None:
    services = ctx.services
    async with await services.bus.subscribe(session_id=rec.id, maxsize=10_000) as sub:  # live from here on
        pane = await ops.call(ctx, "session.pane", {"id": rec.id})
        first: dict[str, Any] = {"type": "pane", "content": pane["pane"], "sessionId": rec.id}
        if rec.pendingPermission is not None:
            first["pendingRequestId"] = rec.pendingPermission.requestId
        await ws.send(json.dumps(first))
        await ws.send(json.dumps({"type": "status", "status": rec.status.value}))
        if rec.status in TERMINAL:
            await ws.send(json.dumps({"type": "ended", "status": rec.status.value, "reason": rec.endReason}))
            await ws.close(1000, "session ended")
            return
        log.info("terminal.open", session_id=rec.id, principal=principal.name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward, ws, sub, nursery.cancel_scope)
            while True:
                raw = await ws.receive()
                try:
                    if len(raw) > MAX_MESSAGE:
                        raise ValidationError(f"message larger than {MAX_MESSAGE} characters")
                    await _handle(ctx, rec.id, decode_json(raw, what="the message"))
                except AegisError as exc:
                    await ws.send(_error(exc))


async def _forward(ws: Any, sub: Any, cancel: trio.CancelScope) -> None:
    async for ev in sub:
        ended = events.payload(ev)
        if isinstance(ended, events.Ended):
            await ws.send(json.dumps({"type": "ended", "status": ended.status.value, "reason": ended.reason}))
            await ws.close(1000, "session ended")
            cancel.cancel()
            return
        out = render(ev)
        if out is not None:
            await ws.send(json.dumps(out))


async def _handle(ctx: ops.OpContext, sid: str, msg: Any) -> None:
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValidationError("messages are JSON objects with a type")
    kind = msg["type"]
    if kind == "input":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ValidationError("input needs text")
        if text in INTERRUPT_KEYS:
            await ops.call(ctx, "session.interrupt", {"id": sid})
            return
        text = text.rstrip("\r\n")
        if text:
            await ops.call(ctx, "session.send", {"id": sid, "text": text})
    elif kind in ("approve", "reject"):
        request_id = msg.get("requestId")
        if request_id is not None and not isinstance(request_id, str):
            raise ValidationError("requestId must be a string")
        await ops.call(ctx, f"session.{kind}", {"id": sid, "requestId": request_id})
    elif kind == "resize":
        return
    elif kind == "auth":
        raise ValidationError("already authenticated")
    else:
        raise ValidationError(f"unknown message type {kind!r}; use input, approve, reject or resize")
