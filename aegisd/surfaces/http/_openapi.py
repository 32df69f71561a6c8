"""The OpenAPI 3.1 document, generated from the routes and the operations registry: each operation's params
struct gives its path, query and body parameters, its result type the response schema (never written by
hand). `make docs` writes it to docs/openapi.json; the daemon serves it at /v1/openapi.json.

Components are named after their structs, which are unique across the operations (test_openapi.py checks
it); msgspec would qualify a clash with the module's name."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from aegisd import __version__, ops

_ERRORS = {"400": "Bad input", "401": "Not authenticated", "403": "Not allowed", "404": "Not found",
           "409": "Conflict with the session's state", "429": "Rate limited", "503": "Unavailable"}
_PATH_PARAMS = {"sid": "session id (or a unique prefix of at least 4 characters)", "kid": "API key id",
                "pid": "pipeline id", "tid": "template id", "mkey": "memory key (namespace/key)",
                "hid": "webhook endpoint index (from 0)", "nid": "node id (`ag nodes` lists them)"}
_REF = "#/components/schemas/{name}"

Route = tuple[tuple[str, ...], str, str, str, int]


def _path(rule: str) -> tuple[str, list[str]]:
    names = re.findall(r"<(?:[a-z]+:)?([a-z_]+)>", rule)
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule), names


def _component(ref: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The component a ``{"$ref": ...}`` names (the params struct of an operation)."""
    name = ref["$ref"].rsplit("/", 1)[-1]
    found: dict[str, Any] = components[name]
    return found


def _query(props: dict[str, Any], required: list[str]) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "required": n in required, "schema": schema} for n, schema in props.items()]


def build(routes: list[Route], extra: dict[str, Any] | None = None,
          etag_ops: frozenset[str] = frozenset()) -> dict[str, Any]:
    types: list[Any] = [ops.ErrorEnvelope]
    for _, _, op_name, _, _ in routes:
        o = ops.get_op(op_name)
        types += [o.params, o.result]
    audit = ops.get_op("audit.query")  # GET /v1/audit (a route of its own: exports) takes its params as a query
    types += [audit.params, audit.result]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs: dict[Any, dict[str, Any]] = {}
    for t, schema in zip(types, schemas, strict=True):
        refs.setdefault(t, schema)
    error = {"application/json": {"schema": refs[ops.ErrorEnvelope]}}
    paths: dict[str, Any] = {}
    for methods, rule, op_name, source, status in routes:
        o = ops.get_op(op_name)
        path, names = _path(rule)
        params_schema = _component(refs[o.params], components)
        props = dict(params_schema.get("properties", {}))
        required = [r for r in params_schema.get("required", []) if r in props]
        parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"},
                       "description": _PATH_PARAMS[n]} for n in names]
        if names:  # the path gives the id (a memory key: the key)
            for taken in ("key",) if "mkey" in names else ("id",):
                props.pop(taken, None)
                required = [r for r in required if r != taken]
        operation: dict[str, Any] = {"operationId": f"{op_name}:{methods[0].lower()}:{path}",
                                     "summary": o.summary, "tags": [op_name.split(".")[0]],
                                     "x-aegis-operation": op_name}
        if "query" in source:
            parameters += _query(props, required)
        if "body" in source:
            body_schema = {"type": "object", "properties": props, "required": required,
                           "additionalProperties": False}
            operation["requestBody"] = {"required": bool(required),
                                        "content": {"application/json": {"schema": body_schema}}}
        if "rules" in source:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"oneOf": [props["rules"], {"type": "object", "properties": {"rules": props["rules"]},
                                                      "additionalProperties": False}]}}}}
        if parameters:
            operation["parameters"] = parameters
        result = {"application/json": {"schema": refs[o.result]}}
        operation["responses"] = {str(status): {"description": "OK", "content": result}}
        if op_name == "session.create":
            operation["responses"]["200"] = {"description": "an idle session in the same workDir was reused",
                                             "content": result}
        if op_name in etag_ops and "GET" in methods:
            operation["responses"][str(status)]["headers"] = {"ETag": {"schema": {"type": "string"}, "description":
                                                                       "weak: a hash of the body"}}
            operation["responses"]["304"] = {"description": "Not Modified: If-None-Match named this ETag"}
            parameters.append({"name": "If-None-Match", "in": "header", "required": False,
                               "schema": {"type": "string"}, "description": "the ETag of the body you hold"})
            operation["parameters"] = parameters
        for code, desc in _ERRORS.items():
            operation["responses"][code] = {"description": desc, "content": error}
        if o.permission not in (None, "public"):
            operation["x-aegis-permission"] = o.permission
        for m in methods:
            paths.setdefault(path, {})[m.lower()] = operation
    for path, item in (extra or {}).items():
        paths.setdefault(path, {}).update(item)
    if "/v1/audit" in paths:
        props = dict(_component(refs[audit.params], components).get("properties", {}))
        renamed = {"since": "from", "until": "to"}  # also accepted under their own names
        query = [{"name": "format", "in": "query", "required": False,
                  "schema": {"enum": ["json", "csv", "ndjson"], "default": "json"}}]
        query += [{"name": renamed.get(n, n), "in": "query", "required": False, "schema": schema}
                  for n, schema in props.items()]
        get = paths["/v1/audit"]["get"]
        get["parameters"] = query
        get["responses"]["200"]["content"] = {
            "application/json": {"schema": refs[audit.result]},
            "text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}
        get["x-aegis-permission"] = audit.permission
    return {
        "openapi": "3.1.0",
        "info": {"title": "Aegis for Python", "version": __version__,
                 "description": "Supervisor for coding-agent sessions over the Agent Client Protocol. Generated "
                                "from the operations registry (aegisd/ops) and its msgspec structs."},
        "servers": [{"url": "http://127.0.0.1:9100"}],
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": dict(sorted(paths.items())),
    }


EXTRA_PATHS: dict[str, Any] = {
    "/v1/events": {"get": {"operationId": "events", "summary": "Server-Sent Events of all sessions",
                           "tags": ["events"], "parameters": [
                               {"name": "token", "in": "query", "schema": {"type": "string"}},
                               {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}],
                           "responses": {"200": {"description": "text/event-stream",
                                                 "content": {"text/event-stream": {"schema": {"type": "string"}}}}}}},
    "/v1/sessions/{sid}/events": {"get": {"operationId": "session_events", "summary": "Server-Sent Events of one "
                                          "session (alias /stream)", "tags": ["events"],
                                          "parameters": [{"name": "sid", "in": "path", "required": True,
                                                          "schema": {"type": "string"}}],
                                          "responses": {"200": {"description": "text/event-stream"}}}},
    "/v1/sessions/{sid}/stream": {"get": {"operationId": "session_stream", "summary": "alias of /events",
                                          "tags": ["events"],
                                          "parameters": [{"name": "sid", "in": "path", "required": True,
                                                          "schema": {"type": "string"}}],
                                          "responses": {"200": {"description": "text/event-stream"}}}},
    "/v1/sessions/{sid}/terminal": {"get": {
        "operationId": "session_terminal", "tags": ["events"],
        "summary": "WebSocket (Upgrade: websocket): the session as a live terminal. Server: {type: pane|stream|"
                   "status|ended|error}; client: {type: auth|input|approve|reject|resize}. See docs/http-api.md",
        "parameters": [{"name": "sid", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "token", "in": "query", "schema": {"type": "string"}}],
        "responses": {"101": {"description": "Switching Protocols"}}}},
    "/v1/auth/oidc": {"get": {"operationId": "oidc_info", "tags": ["auth"], "security": [{}],
                              "summary": "Whether single sign-on is on: {enabled, issuer, clientId, scopes, ready}",
                              "responses": {"200": {"description": "OK"}}}},
    "/auth/login": {"get": {"operationId": "sso_login", "tags": ["auth"], "security": [{}],
                            "summary": "Start the dashboard's single sign-on (redirect to the identity provider)",
                            "responses": {"302": {"description": "to the IdP"}, "404": {"description": "no OIDC"}}}},
    "/auth/callback": {"get": {"operationId": "sso_callback", "tags": ["auth"], "security": [{}],
                               "summary": "Where the identity provider sends the browser back (code, state)",
                               "responses": {"302": {"description": "to /dashboard/, with the session cookie"}}}},
    "/auth/session": {"get": {"operationId": "sso_session", "tags": ["auth"], "security": [{}],
                              "summary": "The browser's sign-in: {authenticated, oidc, identity?, role?, expiresAt?}",
                              "responses": {"200": {"description": "OK"}}}},
    "/auth/logout": {"post": {"operationId": "sso_logout", "tags": ["auth"], "security": [{}],
                              "summary": "End the browser's sign-in", "responses": {"204": {"description": "done"}}}},
    "/v1/auth/device/authorize": {"post": {
        "operationId": "device_authorize", "tags": ["auth"], "security": [{}],
        "summary": "RFC 8628 device authorization, proxied to the identity provider ({client_id, scope?}, JSON or "
                   "form)", "responses": {"200": {"description": "the IdP's answer, passed on"}}}},
    "/v1/auth/device/token": {"post": {
        "operationId": "device_token", "tags": ["auth"], "security": [{}],
        "summary": "RFC 8628 device token poll ({grant_type: device_code grant, device_code, client_id}) or a "
                   "refresh ({grant_type: refresh_token, refresh_token, client_id}), proxied; the IdP's answer "
                   "and status", "responses": {"200": {"description": "tokens"},
                                               "400": {"description": "authorization_pending, slow_down, ..."}}}},
    "/v1/audit": {"get": {"operationId": "audit", "summary": "Query, export (format=json|csv|ndjson) and verify "
                          "the audit log", "tags": ["audit"], "x-aegis-operation": "audit.query",
                          "responses": {"200": {"description": "OK"}}}},
    "/v1/rpc": {"post": {"operationId": "rpc", "summary": "A control-protocol request frame {id, op, params}",
                         "tags": ["rpc"], "responses": {"200": {"description": "the response frame, or NDJSON "
                                                                               "frames for streaming operations"}}}},
    "/v1/cluster/call": {"post": {
        "operationId": "clusterCall", "tags": ["cluster"], "security": [{}],
        "summary": "Node to node (docs/cluster.md): another node of the cluster passes on an operation "
                   "{op, params, principal, requestId, from}; authenticated with the cluster secret in the "
                   "X-Aegis-Cluster header, never with a user's credential",
        "responses": {"200": {"description": "{ok: true, result} or {ok: false, error: {code, message, status, "
                                             "details}}"},
                      "401": {"description": "no cluster secret, or the wrong one"}}}},
    "/metrics": {"get": {"operationId": "prometheus", "summary": "Prometheus metrics (text)", "tags": ["metrics"],
                         "responses": {"200": {"description": "text/plain; version=0.0.4"}}}},
    "/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "tags": ["meta"],
                                 "security": [{}], "responses": {"200": {"description": "OK"}}}},
}


def document() -> dict[str, Any]:
    from aegisd.surfaces.http.routes import ETAG_OPS, ROUTES

    return build(ROUTES, EXTRA_PATHS, ETAG_OPS)


if __name__ == "__main__":
    import json
    from pathlib import Path

    target = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
    target.write_text(json.dumps(document(), indent=1) + "\n")
    print(f"wrote {target}")
