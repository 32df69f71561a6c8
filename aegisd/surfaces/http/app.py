"""The HTTP app's wiring: quart-trio with the browser defences (aegisd/surfaces/http/_browser.py) before every
request, the security headers after, one error mapping (errors.py), and the routes of each concern: the
operations (routes.py), /v1/rpc, SSE, the terminal WebSocket, single sign-on, /metrics, the OpenAPI document
and the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio
from quart import Response, has_websocket_context, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from aegisd.core.errors import AegisError
from aegisd.surfaces.dashboard import register as register_dashboard
from aegisd.surfaces.http import _browser, _direct, _lean, auth, cluster, prometheus, routes, rpc, sse, sso, terminal
from aegisd.surfaces.http._headers import has_body, headers_of
from aegisd.surfaces.http.auth import cors_origin, current_conn, current_request, set_cors_origin
from aegisd.surfaces.http.body import MAX_BODY
from aegisd.surfaces.http.errors import (
    encoder,
    error_response,
    http_envelope,
    internal_envelope,
    json_response,
    request_id,
)
from aegisd.surfaces.http.ratelimits import RateLimits

if TYPE_CHECKING:
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.http")

DRAIN_TIMEOUT_S = 10.0
# set on every answer that does not set them itself: (lowercased name, name, value)
SECURITY_HEADERS = tuple((name.lower(), name, value) for name, value in (
    ("X-Aegis-API-Version", "1"), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store")))


async def drained() -> bool:
    """Read what is left of the request body before answering. A response sent while the body is still
    arriving (a 404 before any view, a 401 or 429 before the body is parsed) left hypercorn's keep-alive
    connection waiting forever for the next request: every POST of 500 kB to an unknown route did. False
    when the body could not be drained (too large, or the client stopped sending): then the connection
    closes after this response."""
    req = current_request()
    if not has_body(headers_of(req)):
        return True
    try:
        with trio.move_on_after(DRAIN_TIMEOUT_S):
            await req.body
            return True
    except HTTPException:  # larger than MAX_BODY: quart stops buffering it
        pass
    return False


class App(QuartTrio):
    """quart-trio, answering quart's question "is this a coroutine function?" (``ensure_async``, asked before each
    call of a view, hook or error handler: half a dozen calls into inspect each time) from a set made once,
    when the app is built, of the registered functions for which quart answered yes. Any other function is
    asked about as before."""

    coroutine_functions: frozenset[Any] = frozenset()
    lean_reads: _lean.LeanReads | None = None  # set by create_app

    def ensure_async(self, func: Any) -> Any:
        try:
            if func in self.coroutine_functions:
                return func
        except TypeError:  # not hashable: not one of them
            pass
        return super().ensure_async(func)

    def remember_coroutine_functions(self) -> None:
        """Note the views, hooks and error handlers registered so far that quart runs as they are."""
        funcs: list[Any] = list(self.view_functions.values())
        for table in (self.before_request_funcs, self.after_request_funcs, self.teardown_request_funcs,
                      self.before_websocket_funcs, self.after_websocket_funcs, self.teardown_websocket_funcs):
            for registered in table.values():
                funcs.extend(registered)
        for by_code in self.error_handler_spec.values():
            for handlers in by_code.values():
                funcs.extend(handlers.values())
        known = set()
        for func in funcs:
            try:
                if QuartTrio.ensure_async(self, func) is func:  # quart's own answer
                    known.add(func)
            except TypeError:  # not hashable: asked about at each call
                pass
        self.coroutine_functions = frozenset(known)


def guard_request(policy: _browser.Policy, req: Any) -> Response | None:
    """Host, Origin and Content-Type of the request ``req`` (see _browser): raises the refusal; answers a CORS
    preflight of an allowed origin (None: go on to the view)."""
    headers = headers_of(req)
    if _browser.check(policy, scheme=req.scheme, headers=headers) is _browser.OriginKind.ALLOWED:
        origin = headers.get("Origin", "")
        set_cors_origin(req, origin)  # its answers, errors included, carry CORS headers
        if _browser.is_preflight(req.method, headers):
            return Response("", status=204, headers=_browser.cors_headers(origin, preflight=True))
    _browser.check_body(method=req.method, path=req.path, headers=headers)
    return None


def guard_browsers(app: QuartTrio, policy: _browser.Policy) -> None:
    """:func:`guard_request` before anything else, for every request; Host and Origin for every WebSocket."""

    @app.before_request
    async def _browser_guard() -> Response | None:
        return guard_request(policy, current_request())  # one look-up of the context, not one per attribute

    @app.before_websocket
    async def _browser_guard_ws() -> Response | None:
        """Refuse the handshake itself (403/421): a refused page never gets an open socket."""
        try:
            if _browser.check(policy, scheme=websocket.scheme, headers=websocket.headers) \
                    is _browser.OriginKind.ALLOWED:
                set_cors_origin(websocket, websocket.headers["Origin"])
        except AegisError as exc:
            log.info("http.websocket_refused", path=websocket.path, code=exc.code, origin=websocket.headers.get(
                "Origin"), host=websocket.headers.get("Host"))
            return error_response(exc, request_id(websocket.headers))
        return None


def secure(resp: Response, req: Any) -> Response:
    """The security headers the answer ``resp`` to ``req`` does not set itself, and CORS headers when ``req``
    comes from an allowed origin."""
    headers = resp.headers
    # each header the answer does not set already (one pass over its headers: werkzeug's setdefault and
    # `in` walk them all for each name, and raise and catch an exception for each one absent)
    present = {name.lower() for name, _ in headers}
    for lower, name, value in SECURITY_HEADERS:
        if lower not in present:
            headers.add(name, value)
    origin = cors_origin(req)
    if origin and "access-control-allow-origin" not in present:
        headers.update(_browser.cors_headers(origin))
    return resp


def finish_answers(app: QuartTrio) -> None:
    """Every answer: the request body drained first (or the connection closed), then :func:`secure`."""

    @app.after_request
    async def _headers(resp: Response) -> Response:
        req = current_request()
        if not has_websocket_context() and has_body(headers_of(req)) and not await drained():
            resp.headers["Connection"] = "close"
        return secure(resp, req)


def answer_error(exc: Exception, conn: Any, alert: Callable[[str, str], object]) -> Response:
    """The envelope answering ``exc``, raised while serving ``conn`` (a request or a WebSocket handshake). A
    server fault (anything but a domain or an HTTP error) is logged and counted for alerts (``alert``): call
    it while handling ``exc``."""
    rid = request_id(headers_of(conn))
    if isinstance(exc, AegisError):
        return error_response(exc, rid)
    method = getattr(conn, "method", "WEBSOCKET")  # the terminal's WebSocket has none
    if isinstance(exc, HTTPException):
        status, body = http_envelope(exc.code, exc.description, method=method, path=conn.path,
                                     max_body=MAX_BODY, request_id=rid)
        return json_response(body, status, rid)
    log.exception("http.internal_error", path=conn.path, request_id=rid, error=repr(exc))
    # the one place api_error is counted: a server fault. Client errors (4xx) are answered above and never
    # count toward alerts.
    alert("api_error", f"{method} {conn.path} answered 500 ({type(exc).__name__}; request {rid})")
    return json_response(internal_envelope(rid), 500, rid)


def map_errors(app: QuartTrio, *, alert: Callable[[str, str], object]) -> None:
    """Every error answers with the envelope (:func:`answer_error`)."""

    @app.errorhandler(AegisError)
    async def _aegis_error(exc: AegisError) -> Response:
        return answer_error(exc, current_conn(), alert)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        return answer_error(exc, current_conn(), alert)

    @app.errorhandler(Exception)
    async def _internal(exc: Exception) -> Response:
        return answer_error(exc, current_conn(), alert)


def _node_hosts(services: Services) -> tuple[str, ...]:
    """The host of this node's advertised URL: other nodes of the cluster call it by that name."""
    from urllib.parse import urlsplit

    if services.cluster is None or not services.cluster.multi_node:
        return ()
    host = urlsplit(services.cluster.url).hostname
    return (host,) if host else ()


def create_app(services: Services) -> QuartTrio:
    # imported here: `python -m aegisd.surfaces.http._openapi` (make docs) runs it after importing this package
    from aegisd.surfaces.http._openapi import document

    app = App("aegisd")
    app.asgi_http_class = _direct.HTTPConnection  # streamed bodies (SSE) written straight to the socket
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["RESPONSE_TIMEOUT"] = None  # long streams are ended by us, not by a timer
    # the daemon's one limiter: /v1/analytics/rate-limits reads it
    limits = RateLimits(services.rate_limiter, ip_per_min=services.config.ipRateLimit,
                        key_rate=lambda key_id: services.keys.get(key_id).rateLimit)
    gate = auth.build(services, limits)

    cfg = services.config
    policy = _browser.Policy.build(bind_host=cfg.host, base_url=cfg.baseUrl,
                                   allowed_hosts=cfg.allowedHosts + _node_hosts(services),
                                   allowed_origins=cfg.allowedOrigins)
    guard_browsers(app, policy)
    finish_answers(app)
    map_errors(app, alert=services.alerts.record)
    lean_views = routes.bind(app, gate)
    rpc.register(app, gate)
    cluster.register(app, gate)
    sse.register(app, gate)
    prometheus.register(app, gate)
    sso.register(app, gate)
    terminal.register(app, gate)

    spec = encoder.encode(document())

    @app.get("/v1/openapi.json")
    async def openapi() -> Response:
        return Response(spec, content_type="application/json")

    register_dashboard(app, services)
    app.remember_coroutine_functions()
    # once every route is registered: the pollers' reads, which _direct.HTTPConnection hands to them
    app.lean_reads = _lean.LeanReads.of(
        app, lean_views, expected_hooks=2, guard=lambda req: guard_request(policy, req), secure=secure,
        answer_error=lambda exc, req: answer_error(exc, req, services.alerts.record))
    return app
