"""A small OpenID Connect provider for tests: discovery, JWKS, authorization code with PKCE (auto-consent),
the device flow, RS256 tokens. Served by hypercorn in the test's nursery; `mint` makes tokens directly."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from quart import Response, request
from quart_trio import QuartTrio

CLIENT_ID = "aegis-dashboard"


class FakeIdp:
    def __init__(self, client_secret: str = "") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.issuer = ""
        self.client_secret = client_secret
        self.user: dict[str, Any] = {"sub": "u-1", "email": "ada@example.com", "name": "Ada", "aegis_role": "operator"}
        self.codes: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = {}  # device_code -> {user_code, approved}
        self.token_requests: list[dict[str, str]] = []
        self.refresh_tokens: set[str] = set()
        self.access_ttl = 300
        self.app = self._build()

    def mint(self, extra: dict[str, Any] | None = None, *, aud: str = CLIENT_ID, ttl: int = 300,
             kid: str | None = None, key: Any = None, iss: str | None = None) -> str:
        now = int(time.time())
        claims = {**self.user, "iss": iss or self.issuer, "aud": aud, "iat": now, "exp": now + ttl, **(extra or {})}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def approve(self, user_code: str) -> None:
        for d in self.devices.values():
            if d["user_code"] == user_code:
                d["approved"] = True

    def _tokens(self, nonce: str | None = None, ttl: int = 300) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens.add(refresh)
        return {"access_token": self.mint(ttl=ttl), "id_token": self.mint({"nonce": nonce} if nonce else {}),
                "refresh_token": refresh, "token_type": "Bearer", "expires_in": ttl}

    def _build(self) -> QuartTrio:
        app = QuartTrio("fake-idp")
        idp = self

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> Any:
            return {"issuer": idp.issuer, "authorization_endpoint": idp.issuer + "/authorize",
                    "token_endpoint": idp.issuer + "/token", "jwks_uri": idp.issuer + "/jwks",
                    "device_authorization_endpoint": idp.issuer + "/device/authorize"}

        @app.get("/jwks")
        async def jwks() -> Any:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp.key.public_key()))
            return {"keys": [{**jwk, "kid": idp.kid, "use": "sig", "alg": "RS256"}]}

        @app.get("/authorize")
        async def authorize() -> Response:
            a = request.args
            if a.get("client_id") != CLIENT_ID or a.get("code_challenge_method") != "S256":
                return Response("bad request", status=400)
            code = secrets.token_urlsafe(16)
            idp.codes[code] = {"challenge": a["code_challenge"], "nonce": a.get("nonce"),
                               "redirect_uri": a["redirect_uri"]}
            target = a["redirect_uri"] + "?" + urlencode({"code": code, "state": a["state"]})
            return Response("", status=302, headers={"Location": target})

        @app.post("/device/authorize")
        async def device_authorize() -> Any:
            form = (await request.form).to_dict()
            if form.get("client_id") != CLIENT_ID:
                return {"error": "invalid_client"}, 401
            device_code, user_code = secrets.token_urlsafe(16), secrets.token_hex(4).upper()
            idp.devices[device_code] = {"user_code": user_code, "approved": False}
            return {"device_code": device_code, "user_code": user_code,
                    "verification_uri": idp.issuer + "/device", "expires_in": 600, "interval": 1,
                    "verification_uri_complete": idp.issuer + "/device?user_code=" + user_code}

        @app.post("/token")
        async def token() -> Any:
            form = (await request.form).to_dict()
            idp.token_requests.append(form)
            if idp.client_secret and form.get("client_secret") != idp.client_secret:
                return {"error": "invalid_client"}, 401
            if form.get("grant_type") == "authorization_code":
                c = idp.codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if c is None or c["challenge"] != challenge or c["redirect_uri"] != form.get("redirect_uri"):
                    return {"error": "invalid_grant"}, 400
                return idp._tokens(c["nonce"])
            if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
                d = idp.devices.get(form.get("device_code", ""))
                if d is None:
                    return {"error": "expired_token"}, 400
                if not d["approved"]:
                    return {"error": "authorization_pending"}, 400
                return idp._tokens(ttl=idp.access_ttl)
            if form.get("grant_type") == "refresh_token":
                if form.get("refresh_token") not in idp.refresh_tokens:
                    return {"error": "invalid_grant"}, 400
                idp.refresh_tokens.discard(form["refresh_token"])  # rotated: each is good once
                return idp._tokens(ttl=idp.access_ttl)
            return {"error": "unsupported_grant_type"}, 400

        return app

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from ._asgi import serve_app

        async with trio.open_nursery() as nursery:
            self.issuer = await nursery.start(serve_app, self.app)
            task_status.started(self.issuer)
