"""Who is calling over HTTP: the credential a request (or a WebSocket handshake) presents — a bearer header, an
SSE token in `?token=` (streams only), the dashboard's sign-in cookie, or nothing (loopback, when no auth is
configured) — verified under the authentication throttle (aegisd/auth/_throttle.py), and the agents of
sessions, recognised by their TCP connection whatever they present (aegisd/auth/callers.py). Every view starts
at the :class:`Gate`: the per-IP limit, the request id, the principal."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from quart import Request, has_websocket_context, request, websocket

from aegisd.auth import oidc as oidc_mod
from aegisd.auth.callers import tcp_peer
from aegisd.auth.principal import Principal, agent_principal
from aegisd.core.config import is_loopback as _is_loopback
from aegisd.core.errors import Forbidden, Unauthorized
from aegisd.ops import OpContext
from aegisd.surfaces.http._headers import headers_of
from aegisd.surfaces.http.errors import request_id
from aegisd.surfaces.http.ratelimits import RateLimits

if TYPE_CHECKING:
    from aegisd.auth import AuthThrottle, CredentialWatch
    from aegisd.auth._sse_tokens import SseTokens
    from aegisd.auth.access import Access
    from aegisd.auth.callers import Callers
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.http")

# a pure function of the client's address, asked on every request: remembered for the addresses seen
is_loopback = functools.lru_cache(maxsize=1024)(_is_loopback)


class Conn(Protocol):
    """What authentication reads of a request or a WebSocket handshake (quart's both have it)."""

    @property
    def headers(self) -> Any: ...  # .get(name, default), case-insensitive

    @property
    def args(self) -> Any: ...  # the query string's MultiDict

    @property
    def cookies(self) -> Any: ...

    @property
    def scope(self) -> Any: ...  # the ASGI scope (a dict: the caller lookup is cached in it)

    @property
    def remote_addr(self) -> str | None: ...


def current_conn() -> Any:
    """The request being served, or the WebSocket handshake (the terminal route)."""
    return websocket if has_websocket_context() else request


def current_request() -> Request:
    """The request being served itself: quart's ``request`` is a proxy that looks the context up on each use."""
    return request._get_current_object()  # type: ignore[attr-defined,no-any-return]


def client_ip(conn: Conn) -> str:
    return conn.remote_addr or "local"


def bearer_token(headers: Any) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" when there is none)."""
    header = headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


# the scope's key for the allowed foreign origin (allowedOrigins) a request or WebSocket handshake comes from, set
# by the browser guard (aegisd/surfaces/http/app.py): absent for the rest
CORS_ORIGIN = "aegis.cors_origin"


def cors_origin(conn: Conn) -> str | None:
    """The allowed foreign origin this request (or handshake) comes from (its answers carry CORS headers)."""
    return conn.scope.get(CORS_ORIGIN)  # type: ignore[no-any-return]


def set_cors_origin(conn: Conn, origin: str) -> None:
    conn.scope[CORS_ORIGIN] = origin


ANONYMOUS = Principal(kind="anonymous", role="viewer", name="anonymous")


class Authenticator:
    """The principal of a request, from what it presents. Each method takes the connection explicitly."""

    def __init__(self, *, access: Access, throttle: AuthThrottle, limits: RateLimits, sse_tokens: SseTokens,
                 credentials: CredentialWatch, oidc: oidc_mod.Oidc | None, callers: Callers,
                 strict_rbac: bool) -> None:
        self.access = access
        self.throttle = throttle
        self.limits = limits
        self.sse_tokens = sse_tokens
        self.credentials = credentials
        self.oidc = oidc
        self.callers = callers
        self.strict_rbac = strict_rbac
        self._uid = os.getuid()  # the daemon's user: zero-config loopback trust is for it (and root) only

    def verified(self, ip: str, credential: str, check: Callable[[str], Principal | None], message: str, *,
                 remember: bool = True) -> Principal:
        """The principal of a presented credential: throttled (429) before it is checked, audited and counted
        when it fails."""
        self.throttle.guard(ip, credential)
        principal = check(credential)
        if principal is None:
            self.throttle.failed(ip, credential)
            self.access.note_auth_failure(ip)
            raise Unauthorized(message)
        self.throttle.succeeded(ip, credential, remember=remember)
        return principal

    def principal(self, conn: Conn, *, sse: bool = False, public: bool = False,
                  cors_origin: str | None = None) -> Principal:
        """Who sends this request. ``sse``: a `?token=` SSE token is taken too; ``public``: no credential at all
        is an anonymous viewer; ``cors_origin``: the allowed foreign origin the request comes from, if any."""
        ip = client_ip(conn)
        agent = self.local_caller(conn)
        if agent is not None:  # a session's agent or one of its tools: its scope, whatever it presents
            assert agent.session_id is not None
            self.limits.agent(agent.session_id)
            return agent
        token = bearer_token(headers_of(conn))
        query_token = conn.args.get("token", "") if sse else ""
        if not token and not query_token and self.oidc is not None and conn.cookies.get(oidc_mod.COOKIE):
            return self._cookie_principal(conn, ip, cors_origin)
        if not token and not query_token:
            if public:
                return ANONYMOUS
            if not self.access.auth_enabled:
                if is_loopback(ip) and conn.scope.get("aegis.peer_uid", self._uid) in (self._uid, 0):
                    return Principal(kind="local", role="viewer" if self.strict_rbac else "admin", name="local")
                raise Unauthorized("authentication is not configured, so only loopback clients are served")
            raise Unauthorized("missing bearer token; set AEGIS_AUTH_TOKEN or send 'Authorization: Bearer "
                               "<token>'")
        if query_token:
            # ?token= (EventSource cannot send headers) takes only short-lived single-use sse_ tokens
            principal = self.verified(ip, query_token, self._sse_principal,
                                      "invalid or expired SSE token (get one from POST /v1/auth/sse-token)",
                                      remember=False)
        else:
            principal = self.verified(ip, token, self.access.authenticate, "invalid or expired token")
        self.limits.principal(principal)
        return principal

    def first_message(self, conn: Conn, token: str) -> Principal:
        """The principal of the token a WebSocket's first message carries (the terminal)."""
        agent = self.local_caller(conn)
        if agent is not None:
            return agent
        return self.verified(client_ip(conn), token, self.access.authenticate, "invalid or expired token")

    def _sse_principal(self, token: str) -> Principal | None:
        minted = self.sse_tokens.consume(token) if token.startswith("sse_") else None
        if minted is not None and self.credentials.ended(minted):
            return None  # minted by a key revoked (or a sign-in ended) since
        return minted  # type: ignore[no-any-return]

    def local_caller(self, conn: Conn) -> Principal | None:
        """The agent principal when this TCP client runs inside a session's process tree (aegisd/auth/callers.py).
        Also notes the local client's uid, so zero-config loopback trust is for the daemon's own user only.
        Looked up once per connection scope."""
        scope = conn.scope
        if "aegis.caller" in scope:
            return scope["aegis.caller"]  # type: ignore[no-any-return]
        # what this TCP connection's earlier requests found (aegisd/surfaces/http/_direct.py keeps a record per
        # connection): the socket's owner and cgroup are the kernel's and do not change while it is open
        known: dict[str, Any] | None = scope.get("aegis.connection")
        if known is not None and "caller" in known:
            scope["aegis.peer_uid"] = known["peer_uid"]
            scope["aegis.caller"] = known["caller"]
            return known["caller"]  # type: ignore[no-any-return]
        client, server = scope.get("client"), scope.get("server")
        found: Principal | None = None
        if self.callers.tcp_lookups and client and server:
            try:
                peer = tcp_peer((client[0], client[1]), (server[0], server[1]))
            except (OSError, ValueError) as exc:
                log.warning("http.caller_lookup_failed", error=str(exc))
                peer = None
            if peer is not None:
                scope["aegis.peer_uid"] = peer.uid
                sid = self.callers.session_of_tcp(peer)
                if sid is not None:
                    found = agent_principal(sid)
                if known is not None:
                    known["peer_uid"], known["caller"] = peer.uid, found
            elif is_loopback(client[0]):
                # a loopback client the kernel does not know has already gone (or is hiding): trust it with
                # nothing, so a request sent just before a reset cannot pass for the user's
                scope["aegis.peer_uid"] = -1
        scope["aegis.caller"] = found
        return found

    def _cookie_principal(self, conn: Conn, ip: str, cors_origin: str | None) -> Principal:
        """The dashboard's single sign-on session. Its cookie is SameSite=Strict, and the browser guard refuses
        foreign origins; an origin of allowedOrigins (a bearer-token client) cannot ride on the cookie either."""
        oidc = self.oidc
        assert oidc is not None
        principal = self.verified(ip, conn.cookies.get(oidc_mod.COOKIE, ""),
                                  lambda c: s.principal if (s := oidc.session(c)) is not None else None,
                                  "your sign-in expired; sign in again")
        if cors_origin:
            raise Forbidden(f"the sign-in cookie is for the dashboard's own origin, not {cors_origin}")
        return principal


class Gate:
    """What every view does first, on the request being served: the per-IP limit (:meth:`admit`), the
    request id, the caller's principal, the operation context."""

    def __init__(self, services: Services, auth: Authenticator, limits: RateLimits) -> None:
        self.services = services
        self.auth = auth
        self.limits = limits

    def admit(self, conn: Conn | None = None) -> None:
        """``conn``: the request being served (default: looked up); a view passes it to each call so the
        context is looked up once."""
        self.limits.ip(self.ip(conn))

    def ip(self, conn: Conn | None = None) -> str:
        return client_ip(conn if conn is not None else current_conn())

    def request_id(self, conn: Conn | None = None) -> str:
        return request_id(headers_of(conn if conn is not None else current_conn()))

    def principal(self, *, sse: bool = False, public: bool = False, conn: Conn | None = None) -> Principal:
        conn = conn if conn is not None else current_conn()
        return self.auth.principal(conn, sse=sse, public=public, cors_origin=cors_origin(conn))

    def context(self, principal: Principal, request_id: str, *, surface: str = "http",
                conn: Conn | None = None) -> OpContext:
        return OpContext(services=self.services, principal=principal, request_id=request_id, surface=surface,
                         ip=self.ip(conn))


def build(services: Services, limits: RateLimits) -> Gate:
    """The gate of a daemon's HTTP app."""
    auth = Authenticator(access=services.access, throttle=services.auth_throttle, limits=limits,
                         sse_tokens=services.sse_tokens, credentials=services.credentials, oidc=services.oidc,
                         callers=services.callers, strict_rbac=services.config.strictRbac)
    return Gate(services, auth, limits)
