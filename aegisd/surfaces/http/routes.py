"""The `/v1` routes of the original Aegis, each bound to one operation of the registry: the table (which the
OpenAPI document also describes), the view that adapts a request to its operation, and the audit export."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from aegisd import ops
from aegisd.core.errors import Unauthorized, ValidationError
from aegisd.surfaces.http._headers import RequestHeaders, headers_of
from aegisd.surfaces.http.auth import ANONYMOUS, Gate, current_request
from aegisd.surfaces.http.body import json_body
from aegisd.surfaces.http.errors import encoder, json_response

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
    (("GET",), "/v1/nodes", "nodes.list", "none", 200),
    (("GET",), "/v1/nodes/<nid>", "nodes.get", "id", 200),
    (("POST",), "/v1/nodes/<nid>/drain", "nodes.drain", "id", 200),
    (("POST",), "/v1/nodes/<nid>/undrain", "nodes.undrain", "id", 200),
]

# Session reads answered with a weak ETag (a hash of the encoded body) and 304 Not Modified to a matching
# If-None-Match, so a poller costs the operation but no transfer or parsing. Not the reads with a side effect
# (session.read moves its cursor) nor those that wait (session.wait, events.poll).
ETAG_OPS = frozenset({
    "session.list", "session.get", "session.health", "session.transcript", "session.transcript.cursor",
    "session.history", "session.stats", "sessions.health", "session.summary", "session.metrics",
    "session.latency", "session.tools", "session.children", "session.permissions.get",
    "session.permission_profile.get", "session.memories.list", "permissions.pending", "pipeline.list",
    "pipeline.get",
})

# The reads answered without quart's request machinery (aegisd/surfaces/http/_lean.py): those pollers repeat,
# which answer at once (no wait, no body)
LEAN_OPS = ETAG_OPS | {"health"}


def etag_of(body: bytes) -> str:
    return 'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """If-None-Match's weak comparison: any listed tag (W/ or not) equal to ours, or `*`."""
    if not if_none_match:
        return False
    opaque = tag.removeprefix("W/")
    for item in if_none_match.split(","):
        item = item.strip()
        if item == "*" or item.removeprefix("W/") == opaque:
            return True
    return False


# path variables, each the param it fills
_PATH_PARAMS = {"sid": "id", "kid": "id", "pid": "id", "tid": "id", "hid": "id", "nid": "id", "mkey": "key"}


class OpView:
    """One route of ROUTES: the operation's params from where the route takes them (``source``: body, rules
    (a body that may be a bare array), query, id (the path), none), called as the caller, answered with
    ``status``."""

    def __init__(self, gate: Gate, op_name: str, source: str, status: int) -> None:
        self.gate = gate
        self.op_name = op_name
        self.op = ops.get_op(op_name)
        self.source = source
        self.status = status
        self.public = self.op.permission == "public"
        self.etag = op_name in ETAG_OPS
        self.strict = "query" not in source

    async def serve(self, **path: str) -> Response:
        return await self.answer(current_request(), path)  # one look-up of the request context, not one per use

    async def answer(self, req: Any, path: dict[str, str]) -> Response:
        """The answer to the request ``req`` (quart's, or a lean read's: aegisd/surfaces/http/_lean.py), whose
        route's variables are ``path``."""
        gate = self.gate
        gate.admit(req)
        rid = gate.request_id(req)
        try:
            principal = gate.principal(public=self.public, conn=req)
        except Unauthorized:
            if not self.public:
                raise
            principal = ANONYMOUS
        ctx = gate.context(principal, rid, conn=req)
        params = await self.params(req, path)
        o = self.op
        if ops.runs_now(ctx, o):  # a handler that never waits (the reads): no task hops
            done = ops.run_now(ctx, o, params, strict=self.strict)
            typed = done.unwrap() if ops.settled(ctx) else await ops.finish(ctx, o, done)
        else:
            typed = await ops.call_typed(ctx, self.op_name, params, strict=self.strict)
        if self.etag and req.method == "GET":
            # the typed result encoded as it is: the same bytes as its builtins copy, without the copy
            return conditional_response(encoder.encode(typed), rid, headers_of(req))
        result = msgspec.to_builtins(typed)
        code = self.status
        if self.op_name == "session.create" and isinstance(result, dict) and result.get("reused"):
            code = 200
        return json_response(result, code, rid)

    async def params(self, req: Any, path: dict[str, str]) -> dict[str, Any]:
        source = self.source
        params: dict[str, Any] = {}
        if "body" in source:
            params.update(await json_body(req))
        if "rules" in source:
            params.update(await json_body(req, list_key="rules"))
        if "body" not in source and "rules" not in source and req.method != "GET":
            # a body where none is taken is refused (a GET's means nothing; the app drains it away)
            if extra := await json_body(req):
                raise ValidationError(f"{req.method} {req.path} takes no request body "
                                      f"(got fields: {', '.join(sorted(map(str, extra))[:5])})")
        if "query" in source and req.query_string:  # no query string: no params (and no parse)
            params.update(req.args.to_dict())
        for name, value in path.items():
            params[_PATH_PARAMS[name]] = value
        return params


def conditional_response(body: bytes, request_id: str, headers: RequestHeaders | None = None) -> Response:
    """200 with the body and its ETag, or 304 with only the ETag when the client already holds that body.
    ``headers``: the request's (default: looked up)."""
    tag = etag_of(body)
    if etag_matches((headers or headers_of(request)).get("If-None-Match"), tag):
        resp = Response(b"", status=304)
    else:
        resp = Response(body, status=200, content_type="application/json")
    out = resp.headers  # none of these is set on a new Response: added, not searched for and replaced
    out.add("ETag", tag)
    out.add("Cache-Control", "private, no-cache")  # a cache may keep it, but must ask again each time
    out.add("X-Request-Id", request_id)
    return resp


def bind(app: QuartTrio, gate: Gate) -> dict[str, Any]:
    """Register every route of ROUTES, and the audit export. Returns the lean reads' views by endpoint: the
    ``GET`` routes of LEAN_OPS (aegisd/surfaces/http/_lean.py)."""
    seen: set[str] = set()
    lean: dict[str, Any] = {}
    for methods, path, op_name, source, status in ROUTES:
        endpoint = f"{path}:{','.join(methods)}"
        assert endpoint not in seen
        seen.add(endpoint)
        view = OpView(gate, op_name, source, status)
        app.add_url_rule(path, endpoint=endpoint, view_func=view.serve, methods=list(methods))
        if methods == ("GET",) and op_name in LEAN_OPS:
            lean[endpoint] = view.answer
    app.add_url_rule("/v1/audit", endpoint="audit", view_func=AuditExport(gate).serve, methods=["GET"])
    return lean


class AuditExport:
    """GET /v1/audit: the audit.query operation, as JSON, CSV or NDJSON (?format=), with from/to as since/until."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def serve(self) -> Response:
        gate = self.gate
        gate.admit()
        rid = gate.request_id()
        ctx = gate.context(gate.principal(), rid)
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
            return json_response(result, 200, rid)
        audit = gate.services.audit
        text = audit.to_csv(result["records"]) if fmt == "csv" else audit.to_ndjson(result["records"])
        resp = Response(text, content_type="text/csv" if fmt == "csv" else "application/x-ndjson")
        resp.headers["X-Aegis-Audit-Count"] = str(result["count"])
        if result.get("cursor") is not None:
            resp.headers["X-Aegis-Audit-Cursor"] = str(result["cursor"])
        if "integrity" in result:
            resp.headers["X-Aegis-Audit-Integrity"] = "ok" if result["integrity"]["ok"] else "broken"
        return resp
