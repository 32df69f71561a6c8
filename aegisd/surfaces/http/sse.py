"""The Server-Sent Events routes: `GET /v1/events` (all sessions the caller may see), `GET
/v1/sessions/{id}/events` and its alias `/stream`; the stream itself is _sse's."""

from __future__ import annotations

from functools import partial

from quart import Response, request
from quart_trio import QuartTrio

from aegisd.core.errors import ValidationError
from aegisd.core.input import INT_MAX
from aegisd.surfaces.http import _sse
from aegisd.surfaces.http._direct import StreamResponse
from aegisd.surfaces.http.auth import Gate


def last_event_id(raw: str | None) -> int | None:
    """The event id to resume after (`Last-Event-ID`, or `?lastEventId=`); None: from now on."""
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError("Last-Event-ID must be an integer event id") from None
    if not 0 <= value <= INT_MAX:
        raise ValidationError("Last-Event-ID must be an event id between 0 and 2**63-1")
    return value


def register(app: QuartTrio, gate: Gate) -> None:
    services = gate.services
    limits = _sse.SseLimits(services.config.sseMaxConnections, services.config.sseMaxPerIp)
    fanout = _sse.Fanout(services.bus)

    async def events(sid: str | None = None) -> Response:
        gate.admit()
        rid = gate.request_id()
        ctx = gate.context(gate.principal(sse=True), rid)
        session_id = ctx.session(sid).id if sid is not None else None
        after = last_event_id(request.headers.get("Last-Event-ID") or request.args.get("lastEventId"))
        ip = request.remote_addr or "local"
        limits.acquire(ip)
        # the fan-out task runs in the app's nursery (opened by the ASGI lifespan): none, and each stream
        # writes its own events
        nursery = getattr(app, "nursery", None)
        resp = StreamResponse(partial(_sse.stream, services=services, fanout=fanout, nursery=nursery,
                                      session_id=session_id, after_id=after, limits=limits, ip=ip,
                                      can_see=None if session_id else (lambda s: ctx.can_see(s)),
                                      principal=ctx.principal),
                              content_type="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        resp.timeout = None
        return resp

    app.add_url_rule("/v1/events", endpoint="events_all", view_func=events, methods=["GET"])
    app.add_url_rule("/v1/sessions/<sid>/events", endpoint="events_session", view_func=events, methods=["GET"])
    app.add_url_rule("/v1/sessions/<sid>/stream", endpoint="events_stream", view_func=events, methods=["GET"])
