"""The HTTP facade: the original Aegis `/v1` routes as thin adapters over the operations registry, plus
`POST /v1/rpc` carrying control-protocol frames. Errors use the envelope {error, code, message, requestId}."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio
from quart import Response, g, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from aegisd import ops
from aegisd.auth import oidc as oidc_mod
from aegisd.auth.callers import tcp_peer
from aegisd.auth.principal import agent_principal
from aegisd.core.errors import AegisError, Forbidden, NotFound, RateLimited, Unauthorized, ValidationError
from aegisd.core.input import INT_MAX, decode_json
from aegisd.surfaces.http import _browser, _sse, _terminal

if TYPE_CHECKING:
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.http")

MAX_BODY = 1024 * 1024
DRAIN_TIMEOUT_S = 10.0
_encoder = msgspec.json.Encoder()

# (methods, path, operation, where params come from, success status)
ROUTES: list[tuple[tuple[str, ...], str, str, str, int]] = [
    (("GET",), "/v1/health", "health", "none", 200),
    (("GET",), "/health", "health", "none", 200),
    (("POST",), "/v1/sessions", "session.create", "body", 201),
    (("GET",), "/v1/sessions", "session.list", "query", 200),
    (("GET",), "/v1/sessions/<sid>", "session.get", "id", 200),
    (("GET",), "/v1/sessions/<sid>/health", "session.health", "id", 200),
    (("POST",), "/v1/sessions/<sid>/send", "session.send", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/input", "session.send", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/prompt", "session.send", "id+body", 200),
    (("GET",), "/v1/sessions/<sid>/read", "session.read", "id", 200),
    (("GET",), "/v1/sessions/<sid>/transcript", "session.transcript", "id+query", 200),
    (("POST",), "/v1/sessions/<sid>/approve", "session.approve", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/reject", "session.reject", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/interrupt", "session.interrupt", "id", 200),
    (("POST",), "/v1/sessions/<sid>/model", "session.set_model", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/mode", "session.set_mode", "id+body", 200),
    (("GET",), "/v1/sessions/<sid>/wait", "session.wait", "id+query", 200),
    (("GET",), "/v1/permissions/pending", "permissions.pending", "none", 200),
    (("GET",), "/v1/events/poll", "events.poll", "query", 200),
    (("POST",), "/v1/sessions/<sid>/escape", "session.interrupt", "id", 200),
    (("DELETE",), "/v1/sessions/<sid>", "session.kill", "id", 200),
    (("POST",), "/v1/sessions/<sid>/kill", "session.kill", "id", 200),
    (("POST",), "/v1/sessions/<sid>/terminate", "session.kill", "id", 200),
    (("POST",), "/v1/sessions/<sid>/stop", "session.kill", "id", 200),
    (("POST",), "/v1/sessions/<sid>/close", "session.close", "id", 200),
    (("GET",), "/v1/sessions/history", "session.history", "query", 200),
    (("GET",), "/sessions", "session.list_legacy", "none", 200),
    (("GET",), "/v1/sessions/<sid>/transcript/cursor", "session.transcript.cursor", "id+query", 200),
    (("POST",), "/v1/sessions/<sid>/discover-commands", "session.commands", "id", 200),
    (("GET",), "/v1/sessions/stats", "session.stats", "none", 200),
    (("GET",), "/v1/sessions/health", "sessions.health", "none", 200),
    (("POST",), "/v1/sessions/batch", "sessions.batch_create", "body", 201),
    (("DELETE",), "/v1/sessions/batch", "sessions.batch_delete", "body", 200),
    (("GET",), "/v1/sessions/<sid>/summary", "session.summary", "id", 200),
    (("GET",), "/v1/sessions/<sid>/metrics", "session.metrics", "id", 200),
    (("GET",), "/v1/sessions/<sid>/latency", "session.latency", "id", 200),
    (("GET",), "/v1/sessions/<sid>/tools", "session.tools", "id", 200),
    (("GET",), "/v1/sessions/<sid>/children", "session.children", "id", 200),
    (("POST",), "/v1/sessions/<sid>/spawn", "session.spawn", "id+body", 201),
    (("POST",), "/v1/sessions/<sid>/fork", "session.fork", "id+body", 201),
    (("GET",), "/v1/sessions/<sid>/permissions", "session.permissions.get", "id", 200),
    (("PUT",), "/v1/sessions/<sid>/permissions", "session.permissions.set", "id+rules", 200),
    (("POST",), "/v1/sessions/<sid>/command", "session.command", "id+body", 200),
    (("GET",), "/v1/sessions/<sid>/pane", "session.pane", "id", 200),
    (("POST",), "/v1/sessions/<sid>/screenshot", "session.screenshot", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/verify", "session.verify", "id+body", 200),
    (("POST",), "/v1/sessions/<sid>/answer", "session.answer", "id+body", 200),
    (("POST",), "/v1/pipelines", "pipeline.create", "body", 201),
    (("GET",), "/v1/pipelines", "pipeline.list", "none", 200),
    (("GET",), "/v1/pipelines/<pid>", "pipeline.get", "id", 200),
    (("GET",), "/v1/sessions/<sid>/permission-profile", "session.permission_profile.get", "id", 200),
    (("PUT",), "/v1/sessions/<sid>/permission-profile", "session.permission_profile.set", "id+body", 200),
    (("POST",), "/v1/templates", "template.create", "body", 201),
    (("GET",), "/v1/templates", "template.list", "none", 200),
    (("GET",), "/v1/templates/<tid>", "template.get", "id", 200),
    (("PUT",), "/v1/templates/<tid>", "template.update", "id+body", 200),
    (("DELETE",), "/v1/templates/<tid>", "template.delete", "id", 200),
    (("POST",), "/v1/memory", "memory.set", "body", 200),
    (("GET",), "/v1/memory", "memory.list", "query", 200),
    (("GET",), "/v1/memory/<path:mkey>", "memory.get", "id+query", 200),
    (("DELETE",), "/v1/memory/<path:mkey>", "memory.delete", "id+query", 200),
    (("GET",), "/v1/memories", "memory.scope", "query", 200),
    (("POST",), "/v1/sessions/<sid>/memories", "session.memories.set", "id+body", 200),
    (("GET",), "/v1/sessions/<sid>/memories", "session.memories.list", "id", 200),
    (("GET",), "/v1/usage", "usage.summary", "query", 200),
    (("GET",), "/v1/usage/by-key", "usage.by_key", "query", 200),
    (("GET",), "/v1/usage/sessions/<sid>", "usage.session", "id+query", 200),
    (("GET",), "/v1/usage/tiers", "usage.tiers", "none", 200),
    (("GET",), "/v1/metrics/aggregate", "metrics.aggregate", "query", 200),
    (("GET",), "/v1/analytics/summary", "analytics.summary", "none", 200),
    (("GET",), "/v1/analytics/costs", "analytics.costs", "none", 200),
    (("GET",), "/v1/analytics/tokens", "analytics.tokens", "none", 200),
    (("GET",), "/v1/channels/health", "channels.health", "none", 200),
    (("GET",), "/v1/analytics/rate-limits", "analytics.rate_limits", "none", 200),
    (("GET",), "/v1/alerts/stats", "alerts.stats", "none", 200),
    (("POST",), "/v1/alerts/test", "alerts.test", "none", 200),
    (("GET",), "/v1/hooks/<hid>/deliveries", "webhooks.deliveries", "id", 200),
    (("GET",), "/v2/", "v2", "none", 200),
    (("GET",), "/v1/webhooks/dead-letter", "webhooks.dead_letter", "none", 200),
    (("GET",), "/v1/metrics", "metrics", "none", 200),
    (("GET",), "/v1/diagnostics", "diagnostics", "query", 200),
    (("GET",), "/v1/tools", "tools", "none", 200),
    (("POST",), "/v1/handshake", "handshake", "body", 200),
    (("POST",), "/v1/auth/keys", "auth.keys.create", "body", 201),
    (("POST",), "/v1/keys", "auth.keys.create", "body", 201),
    (("GET",), "/v1/auth/keys", "auth.keys.list", "none", 200),
    (("GET",), "/v1/keys", "auth.keys.list", "none", 200),
    (("DELETE",), "/v1/auth/keys/<kid>", "auth.keys.revoke", "none", 200),
    (("DELETE",), "/v1/keys/<kid>", "auth.keys.revoke", "none", 200),
    (("POST",), "/v1/auth/keys/<kid>/rotate", "auth.keys.rotate", "body", 200),
    (("GET",), "/v1/auth/keys/<kid>/quotas", "auth.keys.quotas.get", "none", 200),
    (("PUT",), "/v1/auth/keys/<kid>/quotas", "auth.keys.quotas.set", "id+body", 200),
    (("POST",), "/v1/auth/keys/rotate", "auth.keys.rotate", "body", 200),
    (("POST",), "/v1/auth/verify", "auth.verify", "body", 200),
    (("POST",), "/v1/auth/sse-token", "auth.sse_token", "none", 201),
    (("GET",), "/v1/auth/whoami", "auth.whoami", "none", 200),
    (("GET",), "/v1/auth/users", "auth.users", "none", 200),
]
MASTER_RATE_PER_MIN = 6000
AGENT_RATE_PER_MIN = 1200  # a session's agent and its tools, over HTTP


def _json(data: Any, status: int = 200, request_id: str | None = None) -> Response:
    resp = Response(_encoder.encode(data), status=status, content_type="application/json")
    if request_id:
        resp.headers["X-Request-Id"] = request_id
    return resp


def error_response(exc: AegisError, request_id: str) -> Response:
    body: dict[str, Any] = {"error": exc.message, "code": exc.code, "message": exc.message,
                            "requestId": request_id}
    if exc.details is not None:
        body["details"] = exc.details
        if exc.spread_details and isinstance(exc.details, dict):
            body = {**exc.details, **body}
    resp = _json(body, exc.status, request_id)
    if exc.status == 429:
        retry = exc.details.get("retryAfter", 1) if isinstance(exc.details, dict) else 1
        resp.headers["Retry-After"] = str(retry)
    return resp


async def _body(list_key: str | None = None) -> dict[str, Any]:
    """The JSON object in the request body ({} when empty). With ``list_key``, a JSON array is accepted too
    and becomes that key (the original's PUT /permissions takes a bare array)."""
    data = await request.get_data(cache=False)
    if not data or not data.strip():
        return {}
    parsed = decode_json(data, what="request body")
    if list_key is not None and isinstance(parsed, list):
        return {list_key: parsed}
    if not isinstance(parsed, dict):
        raise ValidationError("request body must be a JSON " + ("array or object" if list_key else "object"))
    return parsed


def create_app(services: Services) -> QuartTrio:
    from aegisd.auth import RateLimiter
    from aegisd.core.config import is_loopback

    app = QuartTrio("aegisd")
    limiter = RateLimiter()
    services.rate_limiter = limiter  # read by /v1/analytics/rate-limits
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["RESPONSE_TIMEOUT"] = None  # long streams are ended by us, not by a timer

    def _conn() -> Any:
        """The request, or the websocket handshake (the terminal route)."""
        return websocket if has_websocket_context() else request

    def _request_id() -> str:
        rid = _conn().headers.get("X-Request-Id", "")  # a client's own id is echoed only if it is plain ASCII
        return rid if 0 < len(rid) <= 64 and rid.isascii() and rid.isprintable() else secrets.token_hex(8)

    throttle = services.auth_throttle  # per IP and credential: see aegisd/auth/_throttle.py

    def _ip() -> str:
        return _conn().remote_addr or "local"

    def _verified(ip: str, credential: str, check: Callable[[str], ops.Principal | None], message: str, *,
                  remember: bool = True) -> ops.Principal:
        """The principal of a presented credential: throttled (429) before it is checked, audited and counted
        when it fails."""
        throttle.guard(ip, credential)
        principal = check(credential)
        if principal is None:
            throttle.failed(ip, credential)
            services.access.note_auth_failure(ip)
            raise Unauthorized(message)
        throttle.succeeded(ip, credential, remember=remember)
        return principal

    def _principal(sse: bool = False, public: bool = False) -> ops.Principal:
        ip = _ip()
        agent = _local_caller()
        if agent is not None:  # a session's agent or one of its tools: its scope, whatever it presents
            wait = limiter.hit(f"p:agent:{agent.session_id}", AGENT_RATE_PER_MIN, 60.0)
            if wait:
                raise RateLimited(f"rate limit of {AGENT_RATE_PER_MIN} requests per minute per session's agent "
                                  "exceeded", details={"retryAfter": int(wait) + 1})
            return agent
        header = _conn().headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        query_token = _conn().args.get("token", "") if sse else ""
        if not token and not query_token and services.oidc is not None and _conn().cookies.get(oidc_mod.COOKIE):
            return _cookie_principal(ip)
        if not token and not query_token:
            if public:
                return ops.Principal(kind="anonymous", role="viewer", name="anonymous")
            if not services.access.auth_enabled:
                if is_loopback(ip) and _conn().scope.get("aegis.peer_uid", os.getuid()) in (os.getuid(), 0):
                    role = "viewer" if services.config.strictRbac else "admin"
                    return ops.Principal(kind="local", role=role, name="local")
                raise Unauthorized("authentication is not configured, so only loopback clients are served")
            raise Unauthorized("missing bearer token; set AEGIS_AUTH_TOKEN or send 'Authorization: Bearer "
                               "<token>'")
        if query_token:
            # ?token= (EventSource cannot send headers) takes only short-lived single-use sse_ tokens
            def sse_principal(t: str) -> ops.Principal | None:
                minted = services.sse_tokens.consume(t) if t.startswith("sse_") else None
                if minted is not None and services.credentials.ended(minted):
                    return None  # minted by a key revoked (or a sign-in ended) since
                return minted
            principal = _verified(ip, query_token, sse_principal,
                                  "invalid or expired SSE token (get one from POST /v1/auth/sse-token)",
                                  remember=False)
        else:
            principal = _verified(ip, token, lambda t: services.access.authenticate(t), "invalid or expired token")
        limit = services.keys.get(principal.key_id).rateLimit if principal.kind == "key" and principal.key_id \
            else MASTER_RATE_PER_MIN
        wait = limiter.hit(f"p:{principal.kind}:{principal.key_id}", limit or 100, 60.0)
        if wait:
            raise RateLimited(f"rate limit of {limit} requests per minute exceeded",
                              details={"retryAfter": int(wait) + 1})
        return principal

    def _local_caller() -> ops.Principal | None:
        """The agent principal when this TCP client runs inside a session's process tree (aegisd/auth/callers.py).
        Also notes the local client's uid, so zero-config loopback trust is for the daemon's own user only."""
        scope = _conn().scope
        if "aegis.caller" in scope:
            return scope["aegis.caller"]  # type: ignore[no-any-return]
        client, server = scope.get("client"), scope.get("server")
        found: ops.Principal | None = None
        if services.callers.tcp_lookups and client and server:
            try:
                peer = tcp_peer((client[0], client[1]), (server[0], server[1]))
            except (OSError, ValueError) as exc:
                log.warning("http.caller_lookup_failed", error=str(exc))
                peer = None
            if peer is not None:
                scope["aegis.peer_uid"] = peer.uid
                sid = services.callers.session_of_tcp(peer)
                if sid is not None:
                    found = agent_principal(sid)
            elif is_loopback(client[0]):
                # a loopback client the kernel does not know has already gone (or is hiding): trust it with
                # nothing, so a request sent just before a reset cannot pass for the user's
                scope["aegis.peer_uid"] = -1
        scope["aegis.caller"] = found
        return found

    def _cookie_principal(ip: str) -> ops.Principal:
        """The dashboard's single sign-on session. Its cookie is SameSite=Strict, and the browser guard refuses
        foreign origins; an origin of allowedOrigins (a bearer-token client) cannot ride on the cookie either."""
        oidc = services.oidc
        assert oidc is not None
        principal = _verified(ip, _conn().cookies.get(oidc_mod.COOKIE, ""),
                              lambda c: s.principal if (s := oidc.session(c)) is not None else None,
                              "your sign-in expired; sign in again")
        if g.get("cors_origin"):
            raise Forbidden(f"the sign-in cookie is for the dashboard's own origin, not {g.cors_origin}")
        return principal

    def _ip_limit() -> None:
        per_min = services.config.ipRateLimit
        if per_min <= 0:
            return
        wait = limiter.hit(f"ip:{_ip()}", per_min, 60.0)
        if wait:
            raise RateLimited(f"rate limit of {per_min} requests per minute per IP exceeded",
                              details={"retryAfter": int(wait) + 1})

    # ---- browsers: Host, Origin and Content-Type, before anything else (see _browser) ----------------------
    policy = _browser.Policy.build(bind_host=services.config.host, base_url=services.config.baseUrl,
                                   allowed_hosts=services.config.allowedHosts,
                                   allowed_origins=services.config.allowedOrigins)

    @app.before_request
    async def _browser_guard() -> Response | None:
        g.cors_origin = None
        if _browser.check(policy, scheme=request.scheme, headers=request.headers) is _browser.OriginKind.ALLOWED:
            g.cors_origin = request.headers["Origin"]  # its answers, errors included, carry CORS headers
            if _browser.is_preflight(request.method, request.headers):
                return Response("", status=204, headers=_browser.cors_headers(g.cors_origin, preflight=True))
        _browser.check_body(method=request.method, path=request.path, headers=request.headers)
        return None

    @app.before_websocket
    async def _browser_guard_ws() -> Response | None:
        """Refuse the handshake itself (403/421): a refused page never gets an open socket."""
        g.cors_origin = None
        try:
            if _browser.check(policy, scheme=websocket.scheme, headers=websocket.headers) \
                    is _browser.OriginKind.ALLOWED:
                g.cors_origin = websocket.headers["Origin"]
        except AegisError as exc:
            log.info("http.websocket_refused", path=websocket.path, code=exc.code, origin=websocket.headers.get(
                "Origin"), host=websocket.headers.get("Host"))
            return error_response(exc, _request_id())
        return None

    @app.after_request
    async def _headers(resp: Response) -> Response:
        if not has_websocket_context() and not await _drained():
            resp.headers["Connection"] = "close"
        resp.headers.setdefault("X-Aegis-API-Version", "1")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Cache-Control", "no-store")
        origin = g.get("cors_origin")
        if origin and "Access-Control-Allow-Origin" not in resp.headers:
            resp.headers.update(_browser.cors_headers(origin))
        return resp

    async def _drained() -> bool:
        """Read what is left of the request body before answering. A response sent while the body is still
        arriving (a 404 before any view, a 401 or 429 before the body is parsed) left hypercorn's keep-alive
        connection waiting forever for the next request: every POST of 500 kB to an unknown route did. False
        when the body could not be drained (too large, or the client stopped sending): then the connection
        closes after this response."""
        try:
            with trio.move_on_after(DRAIN_TIMEOUT_S):
                await request.body
                return True
        except HTTPException:  # larger than MAX_BODY: quart stops buffering it
            pass
        return False

    @app.errorhandler(AegisError)
    async def _aegis_error(exc: AegisError) -> Response:
        return error_response(exc, _request_id())

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = {400: "VALIDATION_ERROR", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                413: "PAYLOAD_TOO_LARGE"}.get(exc.code or 500, "HTTP_ERROR")
        msg = {404: f"no route for {request.method} {request.path}",
               405: f"method {request.method} not allowed on {request.path}",
               413: f"request body larger than {MAX_BODY} bytes"}.get(exc.code or 500, exc.description or "")
        rid = _request_id()
        return _json({"error": msg, "code": code, "message": msg, "requestId": rid}, exc.code or 500, rid)

    @app.errorhandler(Exception)
    async def _internal(exc: Exception) -> Response:
        rid = _request_id()
        conn = _conn()  # the terminal's WebSocket has no `request`
        method = getattr(conn, "method", "WEBSOCKET")
        log.exception("http.internal_error", path=conn.path, request_id=rid, error=repr(exc))
        # the one place api_error is counted: a server fault. Client errors (4xx) are answered by the
        # handlers above and never count toward alerts.
        services.alerts.record("api_error", f"{method} {conn.path} answered 500 ({type(exc).__name__}; "
                                          f"request {rid})")
        return _json({"error": "internal error", "code": "INTERNAL_ERROR", "message": "internal error",
                      "requestId": rid}, 500, rid)

    def make_view(op_name: str, source: str, status: int) -> Any:
        public = ops.get_op(op_name).permission == "public"

        async def view(sid: str | None = None, kid: str | None = None, pid: str | None = None,
                       tid: str | None = None, mkey: str | None = None, hid: str | None = None) -> Response:
            _ip_limit()
            rid = _request_id()
            try:
                principal = _principal(public=public)
            except Unauthorized:
                if not public:
                    raise
                principal = ops.Principal(kind="anonymous", role="viewer", name="anonymous")
            ctx = ops.OpContext(services=services, principal=principal, request_id=rid, surface="http", ip=_ip())
            params: dict[str, Any] = {}
            strict = True
            if "body" in source:
                params.update(await _body())
            if "rules" in source:
                params.update(await _body(list_key="rules"))
            if "body" not in source and "rules" not in source and request.method != "GET":
                # a body where none is taken is refused (a GET's means nothing; _drained reads it away)
                if extra := await _body():
                    raise ValidationError(f"{request.method} {request.path} takes no request body "
                                          f"(got fields: {', '.join(sorted(map(str, extra))[:5])})")
            if "query" in source:
                params.update(request.args.to_dict())
                strict = False
            if sid is not None:
                params["id"] = sid
            if kid is not None:
                params["id"] = kid
            if pid is not None:
                params["id"] = pid
            if tid is not None:
                params["id"] = tid
            if hid is not None:
                params["id"] = hid
            if mkey is not None:
                params["key"] = mkey
            result = await ops.call(ctx, op_name, params, strict=strict)
            code = status
            if op_name == "session.create" and isinstance(result, dict) and result.get("reused"):
                code = 200
            return _json(result, code, rid)
        view.__name__ = f"view_{op_name.replace('.', '_')}_{source.replace('+', '_')}_{status}"
        return view

    seen: set[str] = set()
    for methods, path, op_name, source, status in ROUTES:
        view = make_view(op_name, source, status)
        endpoint = f"{path}:{','.join(methods)}"
        assert endpoint not in seen
        seen.add(endpoint)
        app.add_url_rule(path, endpoint=endpoint, view_func=view, methods=list(methods))

    @app.post("/v1/rpc")
    async def rpc() -> Response:
        _ip_limit()
        rid = _request_id()
        ctx = ops.OpContext(services=services, principal=_principal(), request_id=rid, surface="rpc", ip=_ip())
        frame = await _body()
        req_id = frame.get("id")
        name = frame.get("op")
        if not isinstance(name, str):
            raise ValidationError("rpc frame needs an 'op' string")
        o = ops.get_op(name)
        if not o.stream:
            try:
                result = await ops.call(ctx, name, frame.get("params"))
            except AegisError as exc:
                return _json({"id": req_id, "ok": False,
                              "error": {"code": exc.code, "message": exc.message, "status": exc.status}},
                             exc.status, rid)
            return _json({"id": req_id, "ok": True, "result": result}, 200, rid)
        events = ops.stream(ctx, name, frame.get("params"))

        async def gen() -> AsyncIterator[bytes]:
            try:
                async with aclosing(events):
                    async for event in events:
                        yield _encoder.encode({"id": req_id, "event": event}) + b"\n"
                yield _encoder.encode({"id": req_id, "ok": True, "result": {"end": "done"}}) + b"\n"
            except AegisError as exc:
                yield _encoder.encode({"id": req_id, "ok": False, "error": {
                    "code": exc.code, "message": exc.message, "status": exc.status}}) + b"\n"
        resp = Response(gen(), content_type="application/x-ndjson")
        resp.timeout = None
        return resp

    limits = _sse.SseLimits(services.config.sseMaxConnections, services.config.sseMaxPerIp)

    def _last_event_id() -> int | None:
        raw = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ValidationError("Last-Event-ID must be an integer event id") from None
        if not 0 <= value <= INT_MAX:
            raise ValidationError("Last-Event-ID must be an event id between 0 and 2**63-1")
        return value

    async def _events(sid: str | None = None) -> Response:
        _ip_limit()
        rid = _request_id()
        ctx = ops.OpContext(services=services, principal=_principal(sse=True), request_id=rid, surface="http",
                            ip=_ip())
        session_id = ctx.session(sid).id if sid is not None else None
        after = _last_event_id()
        ip = request.remote_addr or "local"
        limits.acquire(ip)
        body = _sse.stream(services, session_id=session_id, after_id=after, limits=limits, ip=ip,
                           can_see=None if session_id else (lambda s: ctx.can_see(s)),
                           principal=ctx.principal)
        resp = Response(body, content_type="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        resp.timeout = None
        return resp

    @app.get("/metrics")
    async def prometheus() -> Response:
        _ip_limit()
        _principal()
        d = services
        text = d.manager.metrics.prometheus(by_state=d.manager.counts(), created=d.manager.created_total,
                                            dropped=d.bus.dropped_subscribers, events=d.bus.published)
        text += d.alerts.prometheus()
        return Response(text, content_type="text/plain; version=0.0.4")

    @app.get("/v1/audit")
    async def audit() -> Response:
        _ip_limit()
        rid = _request_id()
        ctx = ops.OpContext(services=services, principal=_principal(), request_id=rid, surface="http", ip=_ip())
        args = request.args.to_dict()
        fmt = args.pop("format", "json")
        if fmt not in ("json", "csv", "ndjson"):
            raise ValidationError("format must be json, csv or ndjson")
        if "from" in args:
            args["since"] = args.pop("from")
        if "to" in args:
            args["until"] = args.pop("to")
        result = await ops.call(ctx, "audit.query", args, strict=False)
        if fmt == "json":
            return _json(result, 200, rid)
        text = services.audit.to_csv(result["records"]) if fmt == "csv" else services.audit.to_ndjson(result["records"])
        resp = Response(text, content_type="text/csv" if fmt == "csv" else "application/x-ndjson")
        resp.headers["X-Aegis-Audit-Count"] = str(result["count"])
        if result.get("cursor") is not None:
            resp.headers["X-Aegis-Audit-Cursor"] = str(result["cursor"])
        if "integrity" in result:
            resp.headers["X-Aegis-Audit-Integrity"] = "ok" if result["integrity"]["ok"] else "broken"
        return resp

    # ---- single sign-on (OIDC): see aegisd/auth/oidc.py --------------------------------------------------------
    def _oidc() -> oidc_mod.Oidc:
        if services.oidc is None:  # like the memory bridge when off: the feature is not there (404)
            raise NotFound("single sign-on is not configured (AEGIS_OIDC_ISSUER, AEGIS_OIDC_CLIENT_ID)")
        return services.oidc

    def _secure() -> bool:
        return request.scheme == "https"

    @app.get("/v1/auth/oidc")
    async def oidc_info() -> Response:
        _ip_limit()
        o = services.oidc
        body: dict[str, Any] = {"enabled": o is not None}
        if o is not None:
            body.update(issuer=o.cfg.issuer, clientId=o.cfg.clientId, scopes=o.cfg.scopes,
                        ready=o.discovery is not None, error=o.error)
        return _json(body, 200, _request_id())

    @app.get("/auth/login")
    async def oidc_login() -> Response:
        _ip_limit()
        url, browser = _oidc().login_url()
        resp = Response("", status=302, headers={"Location": url})
        # Lax, not Strict: the IdP sends the browser back with a cross-site top-level redirect
        resp.set_cookie(oidc_mod.STATE_COOKIE, browser, max_age=int(oidc_mod.LOGIN_TTL_S), httponly=True,
                        samesite="Lax", secure=_secure(), path="/auth/")
        return resp

    @app.get("/auth/callback")
    async def oidc_callback() -> Response:
        _ip_limit()
        o = _oidc()
        if request.args.get("error"):
            raise Unauthorized(f"sign-in refused by the identity provider: "
                               f"{request.args.get('error_description') or request.args['error']}")
        code, state = request.args.get("code", ""), request.args.get("state", "")
        if not code or not state:
            raise ValidationError("the callback needs code and state")
        sid, session = await o.callback(code=code, state=state,
                                        browser=request.cookies.get(oidc_mod.STATE_COOKIE, ""))
        services.access.record(session.principal, "auth.sso_login",
                               detail={"sub": session.identity.get("sub"), "role": session.principal.role})
        await services.audit.stored()  # acknowledged means stored
        resp = Response("", status=302, headers={"Location": "/dashboard/"})
        resp.set_cookie(oidc_mod.COOKIE, sid, max_age=int(oidc_mod.SESSION_TTL_S), httponly=True, samesite="Strict",
                        secure=_secure(), path="/")
        resp.delete_cookie(oidc_mod.STATE_COOKIE, path="/auth/")
        return resp

    @app.get("/auth/session")
    async def oidc_session() -> Response:
        _ip_limit()
        o = services.oidc
        s = o.session(request.cookies.get(oidc_mod.COOKIE, "")) if o is not None else None
        body: dict[str, Any] = {"authenticated": s is not None, "oidc": o is not None}
        if s is not None:
            body.update(identity=s.identity, role=s.principal.role, expiresAt=s.expires_at_ms)
        return _json(body, 200, _request_id())

    @app.post("/auth/logout")
    async def oidc_logout() -> Response:
        _ip_limit()
        o = services.oidc
        if o is not None:
            await o.end_session(request.cookies.get(oidc_mod.COOKIE, ""))
        resp = Response("", status=204)
        resp.delete_cookie(oidc_mod.COOKIE, path="/")
        return resp

    class DeviceAuthorize(msgspec.Struct, forbid_unknown_fields=True):
        client_id: str
        scope: str | None = None

    class DeviceToken(msgspec.Struct, forbid_unknown_fields=True):
        grant_type: str
        client_id: str
        device_code: str | None = None
        refresh_token: str | None = None

    async def _form(kind: type) -> Any:
        if request.mimetype == "application/x-www-form-urlencoded":
            raw: Any = (await request.form).to_dict()
        else:
            raw = await _body()
        try:
            return msgspec.convert(raw, kind)
        except msgspec.ValidationError as exc:
            raise ValidationError(str(exc)) from None

    @app.post("/v1/auth/device/authorize")
    async def device_authorize() -> Response:
        _ip_limit()
        p = await _form(DeviceAuthorize)
        status, body = await _oidc().device_authorize(p.client_id, p.scope)
        return _json(body, status, _request_id())

    @app.post("/v1/auth/device/token")
    async def device_token() -> Response:
        _ip_limit()
        p = await _form(DeviceToken)
        if p.grant_type == "urn:ietf:params:oauth:grant-type:device_code" and p.device_code:
            status, body = await _oidc().device_token(p.client_id, p.device_code)
        elif p.grant_type == "refresh_token" and p.refresh_token:  # `ag login`'s token, renewed
            status, body = await _oidc().refresh(p.client_id, p.refresh_token)
        else:
            raise ValidationError("grant_type must be urn:ietf:params:oauth:grant-type:device_code (with "
                                  "device_code) or refresh_token (with refresh_token)")
        return _json(body, status, _request_id())

    @app.websocket("/v1/sessions/<sid>/terminal")
    async def terminal(sid: str) -> None:
        """The original's live terminal, for ACP: see _terminal."""
        _ip_limit()
        rid = secrets.token_hex(8)

        async def first_message_auth(token: str) -> ops.Principal:
            ip = _ip()
            agent = _local_caller()
            if agent is not None:
                return agent
            return _verified(ip, token, lambda t: services.access.authenticate(t), "invalid or expired token")

        try:
            principal: ops.Principal | None = _principal(sse=True)
        except Unauthorized as exc:
            if not services.access.auth_enabled or _conn().args.get("token") or _conn().headers.get("Authorization"):
                await websocket.accept()
                await _terminal.refuse(websocket, exc)
                return
            principal = None  # the first message may carry {type: "auth", token}
        except AegisError as exc:
            await websocket.accept()
            await _terminal.refuse(websocket, exc)
            return
        await _terminal.serve(services, websocket, sid, principal, first_message_auth=first_message_auth,
                              request_id=rid, ip=_ip())

    app.add_url_rule("/v1/events", endpoint="events_all", view_func=_events, methods=["GET"])
    app.add_url_rule("/v1/sessions/<sid>/events", endpoint="events_session", view_func=_events, methods=["GET"])
    app.add_url_rule("/v1/sessions/<sid>/stream", endpoint="events_stream", view_func=_events, methods=["GET"])

    from aegisd.surfaces.http._openapi import document

    spec = _encoder.encode(document())

    @app.get("/v1/openapi.json")
    async def openapi() -> Response:
        return Response(spec, content_type="application/json")

    from aegisd.surfaces.dashboard import register

    register(app, services)
    return app
