"""Who is calling over HTTP (aegisd/surfaces/http/auth.py), alone: fake connections, a fake access layer, the
real throttle and rate limits on a fake clock. No app, no daemon."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from aegisd.auth import AuthThrottle, Principal
from aegisd.auth import oidc as oidc_mod
from aegisd.core.errors import Forbidden, RateLimited, Unauthorized
from aegisd.core.ratelimit import RateLimiter
from aegisd.surfaces.http.auth import ANONYMOUS, Authenticator, bearer_token, client_ip
from aegisd.surfaces.http.ratelimits import RateLimits

MASTER = Principal(kind="master", role="admin", name="master")
KEY = Principal(kind="key", key_id="k1", role="operator", name="ci")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeAccess:
    def __init__(self, *, auth_enabled: bool = True) -> None:
        self.auth_enabled = auth_enabled
        self.failures: list[str] = []

    def authenticate(self, token: str) -> Principal | None:
        return {"master-token": MASTER, "key-token": KEY}.get(token)

    def note_auth_failure(self, ip: str) -> None:
        self.failures.append(ip)


class FakeSseTokens:
    def __init__(self) -> None:
        self.tokens = {"sse_good": KEY}

    def consume(self, token: str) -> Any:
        return self.tokens.pop(token, None)


def conn(*, headers: dict[str, str] | None = None, args: dict[str, str] | None = None,
         cookies: dict[str, str] | None = None, ip: str | None = "127.0.0.1", scope: dict[str, Any] | None = None
         ) -> Any:
    return SimpleNamespace(headers=headers or {}, args=args or {}, cookies=cookies or {}, remote_addr=ip,
                           scope={} if scope is None else scope)


def authenticator(*, auth_enabled: bool = True, strict_rbac: bool = False, oidc: Any = None,
                  key_rate: int | None = 2, ended: str | None = None) -> tuple[Authenticator, FakeAccess, Clock]:
    clock = Clock()
    access = FakeAccess(auth_enabled=auth_enabled)
    limits = RateLimits(RateLimiter(clock=clock), ip_per_min=0, key_rate=lambda _: key_rate)
    auth = Authenticator(access=access, throttle=AuthThrottle(per_credential=2, clock=clock),  # type: ignore[arg-type]
                         limits=limits, sse_tokens=FakeSseTokens(),  # type: ignore[arg-type]
                         credentials=SimpleNamespace(ended=lambda p: ended),  # type: ignore[arg-type]
                         oidc=oidc, callers=SimpleNamespace(tcp_lookups=False),  # type: ignore[arg-type]
                         strict_rbac=strict_rbac)
    return auth, access, clock


def test_bearer_token_and_ip() -> None:
    assert bearer_token({"Authorization": "Bearer  abc "}) == "abc"
    assert bearer_token({"Authorization": "bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) == ""
    assert bearer_token({}) == ""
    assert client_ip(conn(ip=None)) == "local"


def test_bearer_header_is_verified() -> None:
    auth, access, _ = authenticator()
    assert auth.principal(conn(headers={"Authorization": "Bearer master-token"})) is MASTER
    with pytest.raises(Unauthorized, match="invalid or expired token"):
        auth.principal(conn(headers={"Authorization": "Bearer wrong"}))
    assert access.failures == ["127.0.0.1"]


def test_no_credential() -> None:
    auth, _, _ = authenticator()
    with pytest.raises(Unauthorized, match="missing bearer token"):
        auth.principal(conn())
    assert auth.principal(conn(), public=True) is ANONYMOUS


def test_loopback_without_auth_is_the_local_user() -> None:
    auth, _, _ = authenticator(auth_enabled=False)
    assert auth.principal(conn()).role == "admin"
    assert auth.principal(conn(scope={"aegis.peer_uid": os.getuid()})).kind == "local"
    with pytest.raises(Unauthorized, match="only loopback"):
        auth.principal(conn(scope={"aegis.peer_uid": -1}))  # another user's process, or one already gone
    with pytest.raises(Unauthorized, match="only loopback"):
        auth.principal(conn(ip="192.0.2.7"))
    strict, _, _ = authenticator(auth_enabled=False, strict_rbac=True)
    assert strict.principal(conn()).role == "viewer"


def test_query_token_only_on_streams_and_only_sse_tokens() -> None:
    auth, _, _ = authenticator()
    with pytest.raises(Unauthorized, match="missing bearer token"):
        auth.principal(conn(args={"token": "sse_good"}))  # not a stream: ?token= is not read
    with pytest.raises(Unauthorized, match="SSE token"):
        auth.principal(conn(args={"token": "master-token"}), sse=True)  # a long-lived token in a URL: no
    assert auth.principal(conn(args={"token": "sse_good"}), sse=True) is KEY
    with pytest.raises(Unauthorized, match="SSE token"):
        auth.principal(conn(args={"token": "sse_good"}), sse=True)  # single use


def test_sse_token_of_an_ended_credential_is_refused() -> None:
    auth, _, _ = authenticator(ended="revoked")
    with pytest.raises(Unauthorized):
        auth.principal(conn(args={"token": "sse_good"}), sse=True)


def test_failures_are_throttled_per_credential() -> None:
    auth, access, clock = authenticator()
    bad = conn(headers={"Authorization": "Bearer wrong"})
    for _ in range(2):
        with pytest.raises(Unauthorized):
            auth.principal(bad)
    with pytest.raises(RateLimited) as exc:
        auth.principal(bad)  # refused before it is verified
    assert exc.value.details == {"retryAfter": 60} and len(access.failures) == 2
    assert auth.principal(conn(headers={"Authorization": "Bearer master-token"})) is MASTER  # others still work
    clock.now += 60
    with pytest.raises(Unauthorized):
        auth.principal(bad)


def test_key_rate_limit() -> None:
    auth, _, clock = authenticator(key_rate=2)
    c = conn(headers={"Authorization": "Bearer key-token"})
    auth.principal(c)
    auth.principal(c)
    with pytest.raises(RateLimited, match="rate limit of 2 requests per minute"):
        auth.principal(c)
    clock.now += 60
    assert auth.principal(c) is KEY


def test_agent_of_a_session_is_recognised_whatever_it_presents() -> None:
    auth, _, _ = authenticator()
    agent = Principal(kind="agent", role="agent", name="agent:s1", session_id="s1")
    c = conn(headers={"Authorization": "Bearer master-token"}, scope={"aegis.caller": agent})
    assert auth.principal(c) is agent
    assert auth.first_message(c, "wrong") is agent
    assert auth.local_caller(conn(scope={})) is None  # no lookups here: nobody's agent, and remembered
    with pytest.raises(Unauthorized):
        auth.first_message(conn(), "wrong")


def test_sign_in_cookie() -> None:
    session = SimpleNamespace(principal=Principal(kind="oidc", role="operator", name="alice"))
    oidc = SimpleNamespace(session=lambda sid: session if sid == "good" else None)
    auth, _, _ = authenticator(oidc=oidc)
    assert auth.principal(conn(cookies={oidc_mod.COOKIE: "good"})) is session.principal
    with pytest.raises(Unauthorized, match="sign in again"):
        auth.principal(conn(cookies={oidc_mod.COOKIE: "stale"}))
    with pytest.raises(Forbidden, match="dashboard's own origin"):
        auth.principal(conn(cookies={oidc_mod.COOKIE: "good"}), cors_origin="https://app.example")
    # a bearer header wins over the cookie
    assert auth.principal(conn(headers={"Authorization": "Bearer master-token"},
                               cookies={oidc_mod.COOKIE: "good"})) is MASTER
