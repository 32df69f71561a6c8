"""Single sign-on over HTTP (the protocol is aegisd/auth/oidc.py): the dashboard's browser sign-in
(`/auth/login`, `/auth/callback`, `/auth/session`, `/auth/logout`, `/v1/auth/oidc`) and the device flow of
`ag login` (`/v1/auth/device/authorize`, `/v1/auth/device/token`, forms or JSON, as RFC 8628 has them)."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from aegisd.auth import oidc as oidc_mod
from aegisd.core.errors import NotFound, Unauthorized, ValidationError
from aegisd.surfaces.http.auth import Gate
from aegisd.surfaces.http.body import json_body
from aegisd.surfaces.http.errors import json_response

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class DeviceAuthorize(msgspec.Struct, forbid_unknown_fields=True):
    client_id: str
    scope: str | None = None


class DeviceToken(msgspec.Struct, forbid_unknown_fields=True):
    grant_type: str
    client_id: str
    device_code: str | None = None
    refresh_token: str | None = None


async def form(kind: type) -> Any:
    """The request's form (application/x-www-form-urlencoded) or JSON body, as a ``kind``."""
    if request.mimetype == "application/x-www-form-urlencoded":
        raw: Any = (await request.form).to_dict()
    else:
        raw = await json_body(request)
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise ValidationError(str(exc)) from None


def _secure() -> bool:
    return request.scheme == "https"


def register(app: QuartTrio, gate: Gate) -> None:
    services = gate.services

    def configured() -> oidc_mod.Oidc:
        if services.oidc is None:  # like the memory bridge when off: the feature is not there (404)
            raise NotFound("single sign-on is not configured (AEGIS_OIDC_ISSUER, AEGIS_OIDC_CLIENT_ID)")
        return services.oidc

    @app.get("/v1/auth/oidc")
    async def oidc_info() -> Response:
        gate.admit()
        o = services.oidc
        body: dict[str, Any] = {"enabled": o is not None}
        if o is not None:
            body.update(issuer=o.cfg.issuer, clientId=o.cfg.clientId, scopes=o.cfg.scopes,
                        ready=o.discovery is not None, error=o.error)
        return json_response(body, 200, gate.request_id())

    @app.get("/auth/login")
    async def oidc_login() -> Response:
        gate.admit()
        url, browser = configured().login_url()
        resp = Response("", status=302, headers={"Location": url})
        # Lax, not Strict: the IdP sends the browser back with a cross-site top-level redirect
        resp.set_cookie(oidc_mod.STATE_COOKIE, browser, max_age=int(oidc_mod.LOGIN_TTL_S), httponly=True,
                        samesite="Lax", secure=_secure(), path="/auth/")
        return resp

    @app.get("/auth/callback")
    async def oidc_callback() -> Response:
        gate.admit()
        o = configured()
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
        resp = Response("", status=302, headers={"Location": "/dashboard/"})
        resp.set_cookie(oidc_mod.COOKIE, sid, max_age=int(oidc_mod.SESSION_TTL_S), httponly=True, samesite="Strict",
                        secure=_secure(), path="/")
        resp.delete_cookie(oidc_mod.STATE_COOKIE, path="/auth/")
        return resp

    @app.get("/auth/session")
    async def oidc_session() -> Response:
        gate.admit()
        o = services.oidc
        s = o.session(request.cookies.get(oidc_mod.COOKIE, "")) if o is not None else None
        body: dict[str, Any] = {"authenticated": s is not None, "oidc": o is not None}
        if s is not None:
            body.update(identity=s.identity, role=s.principal.role, expiresAt=s.expires_at_ms)
        return json_response(body, 200, gate.request_id())

    @app.post("/auth/logout")
    async def oidc_logout() -> Response:
        gate.admit()
        o = services.oidc
        if o is not None:
            o.end_session(request.cookies.get(oidc_mod.COOKIE, ""))
        resp = Response("", status=204)
        resp.delete_cookie(oidc_mod.COOKIE, path="/")
        return resp

    @app.post("/v1/auth/device/authorize")
    async def device_authorize() -> Response:
        gate.admit()
        p = await form(DeviceAuthorize)
        status, body = await configured().device_authorize(p.client_id, p.scope)
        return json_response(body, status, gate.request_id())

    @app.post("/v1/auth/device/token")
    async def device_token() -> Response:
        gate.admit()
        p = await form(DeviceToken)
        if p.grant_type == DEVICE_CODE_GRANT and p.device_code:
            status, body = await configured().device_token(p.client_id, p.device_code)
        elif p.grant_type == "refresh_token" and p.refresh_token:  # `ag login`'s token, renewed
            status, body = await configured().refresh(p.client_id, p.refresh_token)
        else:
            raise ValidationError("grant_type must be urn:ietf:params:oauth:grant-type:device_code (with "
                                  "device_code) or refresh_token (with refresh_token)")
        return json_response(body, status, gate.request_id())
