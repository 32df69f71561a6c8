"""Browser defences: a web page the user visits must not drive or read the API, whatever the auth mode.

Three checks run on every HTTP request and WebSocket handshake, before authentication:

- **Host** (DNS rebinding): a page on ``attacker.example`` that re-resolves its name to 127.0.0.1 sends
  same-origin requests carrying ``Host: attacker.example:<port>``. Only ``localhost`` (and ``*.localhost``),
  IP literals (rebinding needs a DNS name), the configured bind host, the host of ``baseUrl`` and the names
  in ``allowedHosts`` are served; others get 421 ``HOST_NOT_ALLOWED``. A request without Host (HTTP/1.0) is
  served.
- **Origin** (CSRF, cross-site WebSocket hijacking): browsers send ``Origin`` on cross-origin requests, on
  every POST and on WebSocket handshakes. A request carrying one is served only when it is the daemon's own
  origin (the dashboard: the request's scheme and Host) or the origin of ``baseUrl``, or is listed in
  ``allowedOrigins``; ``Origin: null`` (sandboxed or file pages) never is. Others: 403 ``ORIGIN_NOT_ALLOWED``.
- **Content-Type** (simple requests): a request with a body must say ``application/json``, so a page can only
  send one after a CORS preflight, which is granted to ``allowedOrigins`` alone. Others: 415
  ``UNSUPPORTED_MEDIA_TYPE``. The OAuth device-flow proxy also takes form bodies (RFC 8628 clients).

Pure functions over header values; ``aegisd/surfaces/http/app.py`` wires :func:`check` (Host, Origin) and
:func:`check_body` in as a before-request hook, :func:`check` as a before-websocket hook, and adds
:func:`cors_headers` to the answers to configured origins."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from aegisd.core.errors import HostNotAllowed, OriginNotAllowed, UnsupportedMediaType
from aegisd.core.sections import host_entry, host_name, is_ip, origin_entry, origin_of

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# routes that also take form bodies: the OAuth 2.0 device-flow proxy (RFC 8628 clients post forms)
FORM_PATHS = frozenset({"/v1/auth/device/authorize", "/v1/auth/device/token"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
CORS_METHODS = "GET, POST, PUT, DELETE"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-Request-Id, If-None-Match"
CORS_EXPOSE = "X-Request-Id, Retry-After, X-Aegis-API-Version, ETag"
CORS_MAX_AGE = "600"
SEEN_HOSTS_MAX = 256


class Headers(Protocol):
    """Request headers, looked up case-insensitively (werkzeug's Headers; a dict in unit tests)."""

    def get(self, key: str) -> str | None: ...


class OriginKind(Enum):
    NONE = "none"  # no Origin header: not a browser's cross-origin request
    OWN = "own"  # the daemon's own origin (the dashboard)
    ALLOWED = "allowed"  # listed in allowedOrigins: gets CORS headers


@dataclass(frozen=True)
class Policy:
    """What is served, from the configuration (built once when the app is made)."""

    hosts: frozenset[str] = frozenset()  # exact names
    suffixes: tuple[str, ...] = ()  # ".example.com": that name and its subdomains
    origins: frozenset[str] = frozenset()  # allowedOrigins, normalized: these get CORS headers
    own_origins: frozenset[str] = frozenset()  # baseUrl's origin: the dashboard behind a proxy
    # Host header values already judged (a client sends the same one on every request): value -> served
    _seen_hosts: dict[str, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def build(cls, *, bind_host: str = "", base_url: str = "", allowed_hosts: Iterable[str] = (),
              allowed_origins: Iterable[str] = ()) -> Policy:
        hosts: set[str] = set()
        suffixes: list[str] = []
        for entry in allowed_hosts:
            h = host_entry(entry)
            if h.startswith("."):
                suffixes.append(h)
            else:
                hosts.add(h)
        if bind_host.strip().strip("[]") not in WILDCARD_BINDS:
            name = host_name(f"[{bind_host.strip('[]')}]" if ":" in bind_host else bind_host)
            if name:
                hosts.add(name)
        own: set[str] = set()
        if base_url:
            base = urllib.parse.urlsplit(base_url)
            name = host_name(base.netloc.rpartition("@")[2])
            if name:
                hosts.add(name)
            origin = origin_of(f"{base.scheme}://{base.netloc}")
            if origin:
                own.add(origin)
        return cls(hosts=frozenset(hosts), suffixes=tuple(suffixes),
                   origins=frozenset(origin_entry(o) for o in allowed_origins), own_origins=frozenset(own))

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this Host header is served (None: no header, HTTP/1.0)."""
        if host is None:
            return True
        seen = self._seen_hosts.get(host)
        if seen is not None:
            return seen
        if len(self._seen_hosts) >= SEEN_HOSTS_MAX:
            self._seen_hosts.clear()
        verdict = self._seen_hosts[host] = self._host_allowed(host)
        return verdict

    def _host_allowed(self, host: str) -> bool:
        name = host_name(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or is_ip(name) or name in self.hosts:
            return True
        return any(name == s[1:] or name.endswith(s) for s in self.suffixes)

    def origin_kind(self, origin: str | None, *, scheme: str, host: str | None) -> OriginKind | None:
        """How a request carrying this Origin is served; None: refused. ``scheme`` is the request's (ws and
        wss count as http and https), ``host`` its Host header."""
        if origin is None:
            return OriginKind.NONE
        normal = origin_of(origin)
        if normal is None:
            return None
        if host is not None:
            web = {"ws": "http", "wss": "https"}.get(scheme, scheme)
            if normal == origin_of(f"{web}://{host}"):
                return OriginKind.OWN
        if normal in self.own_origins:
            return OriginKind.OWN
        if normal in self.origins:
            return OriginKind.ALLOWED
        return None


def json_body_ok(headers: Headers, *, form_ok: bool = False) -> bool:
    """True when the request has no body, or says its body is JSON (form too when ``form_ok``)."""
    length = (headers.get("Content-Length") or "").strip()
    chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
    if not chunked and (not length or (length.isdigit() and int(length) == 0)):
        return True
    mime = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    return mime == JSON or (form_ok and mime == FORM)


def check(policy: Policy, *, scheme: str, headers: Headers) -> OriginKind:
    """Refuse a request or WebSocket handshake whose Host or Origin is not served (HostNotAllowed,
    OriginNotAllowed); else say how its Origin is served."""
    # no Host, or an empty one (what quart reads for an HTTP/1.0 request without one): no name to rebind
    host = headers.get("Host") or None
    if not policy.host_allowed(host):
        shown = host_name(host or "") or (host or "")
        raise HostNotAllowed(
            f"Host {shown[:100]!r} is not served (a DNS-rebinding defence): use localhost or an IP address, or "
            f"add the name to allowedHosts (AEGIS_ALLOWED_HOSTS)")
    origin = headers.get("Origin")
    kind = policy.origin_kind(origin, scheme=scheme, host=host)
    if kind is None:
        if (origin or "").strip().lower() == "null":
            raise OriginNotAllowed("requests from pages with Origin: null (sandboxed or local files) are refused")
        raise OriginNotAllowed(f"cross-origin request from {(origin or '')[:100]!r} refused; add that origin to "
                               f"allowedOrigins (AEGIS_ALLOWED_ORIGINS) to allow it")
    return kind


def check_body(*, method: str, path: str, headers: Headers) -> None:
    """Refuse a request body that is not JSON (UnsupportedMediaType); form bodies only on FORM_PATHS."""
    form_ok = method == "POST" and path in FORM_PATHS
    if not json_body_ok(headers, form_ok=form_ok):
        also = f" (or {FORM})" if form_ok else ""
        raise UnsupportedMediaType(
            f"request bodies must be JSON: send Content-Type: {JSON}{also}, not "
            f"{(headers.get('Content-Type') or 'none')[:100]!r}")


def is_preflight(method: str, headers: Headers) -> bool:
    return method == "OPTIONS" and bool(headers.get("Origin")) and bool(headers.get("Access-Control-Request-Method"))


def cors_headers(origin: str, *, preflight: bool = False) -> dict[str, str]:
    """The CORS answer for a configured origin (never with credentials)."""
    out = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        out.update({"Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Allow-Headers": CORS_HEADERS,
                    "Access-Control-Max-Age": CORS_MAX_AGE})
    else:
        out["Access-Control-Expose-Headers"] = CORS_EXPOSE
    return out
