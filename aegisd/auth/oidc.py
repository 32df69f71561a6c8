"""OpenID Connect: people sign in with the organisation's identity provider instead of sharing keys.

- Bearer JWTs from the IdP (access or ID tokens) are accepted on every route: signature checked against the
  IdP's JWKS (fetched at start, refreshed every 10 minutes and when an unknown key id shows up), `iss`, `aud`
  (the configured audience, else the client id), `exp`/`nbf` with 60 s of leeway. The role comes from the
  `roleClaim` claim (admin | operator | viewer, else `defaultRole`); the principal is `oidc:<sub>`, which owns
  the sessions it creates.
- The dashboard signs in with the authorization-code flow and PKCE (`/auth/login` → IdP → `/auth/callback`),
  then holds an opaque, HttpOnly, SameSite=Strict session cookie (8 h) that the API accepts.
- Devices (`ag login`) use the device flow, proxied by `/v1/auth/device/authorize` and `/v1/auth/device/token`.

Needs PyJWT with its crypto extra (`pip install 'aegis-py[oidc]'`)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog
import trio

from aegisd.auth.principal import Credential
from aegisd.core.errors import AegisError, Unavailable, ValidationError
from aegisd.store import Collection, migrate_legacy

if TYPE_CHECKING:
    from aegisd.auth.principal import Principal
    from aegisd.core.config import OidcConfig

log = structlog.get_logger("aegisd.oidc")

REFRESH_S = 600.0
MIN_REFETCH_S = 30.0
LOGIN_TTL_S = 600.0
SESSION_TTL_S = 8 * 3600.0
SEEN_FLUSH_S = 60.0  # a dashboard session's lastSeenAt reaches the store at most this often
MAX_SEEN = 1000  # bearer-token users remembered (in memory) for the Users view
LEEWAY_S = 60  # clock skew allowed on exp and nbf
ROLES = ("admin", "operator", "viewer")
COOKIE = "aegis_session"
STATE_COOKIE = "aegis_oidc_state"


class IdpError(AegisError):
    code = "IDP_ERROR"
    status = 502


def looks_like_jwt(token: str) -> bool:
    return token.startswith("ey") and token.count(".") == 2


def _identity(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: claims.get(k) for k in ("sub", "email", "name") if claims.get(k) is not None}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _Login:
    verifier: str
    nonce: str
    browser: str  # the value of the state cookie: the callback must come back to the same browser
    created: float = field(default_factory=time.monotonic)


@dataclass
class DashboardSession:
    principal: Principal
    identity: dict[str, Any]
    expires_at_ms: int
    created_at_ms: int = 0
    last_seen_ms: int = 0  # the last request made with it


@dataclass
class SeenUser:
    """A single sign-on user seen on a bearer token (`ag login`): kept in memory, for the Users view."""

    identity: dict[str, Any]
    role: str
    last_seen_ms: int


def _doc_of(s: DashboardSession) -> dict[str, Any]:
    return {"principal": {"keyId": s.principal.key_id, "role": s.principal.role, "name": s.principal.name},
            "identity": s.identity, "expiresAt": s.expires_at_ms, "createdAt": s.created_at_ms,
            "lastSeenAt": s.last_seen_ms}


def _session_of(key: str, v: Any) -> DashboardSession | None:
    from aegisd.auth.principal import Principal

    try:
        p = v["principal"]
        return DashboardSession(
            principal=Principal(kind="oidc", key_id=p["keyId"], role=p["role"], name=p["name"],
                                credential=Credential("sso", key)),
            identity=dict(v["identity"]), expires_at_ms=int(v["expiresAt"]),
            created_at_ms=int(v.get("createdAt") or 0), last_seen_ms=int(v.get("lastSeenAt") or 0))
    except (KeyError, TypeError, ValueError):
        return None


def _read_legacy(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


def _digest(sid: str) -> str:
    """Sessions are stored under the SHA-256 of their cookie: the file alone signs nobody in."""
    return hashlib.sha256(sid.encode()).hexdigest()


class Oidc:
    def __init__(self, cfg: OidcConfig, base_url: Callable[[], str], sessions: Collection | None = None, *,
                 legacy_file: Path | None = None) -> None:
        self.cfg = cfg
        self.store = sessions  # the store's `sso-sessions` collection: one document per dashboard session
        self.legacy_file = legacy_file  # an earlier version's <state>/sso-sessions.json, moved into the store
        self._base_url = base_url  # the daemon's URL, known once it listens
        self.discovery: dict[str, Any] | None = None
        self._jwks: Any = None  # jwt.PyJWKSet
        self._refetch = trio.Event()
        self._last_fetch = 0.0
        self.ready = trio.Event()  # set after the first successful fetch
        self.error: str | None = None
        self._logins: dict[str, _Login] = {}
        self.sessions: dict[str, DashboardSession] = {}  # by _digest(cookie)
        self.bearer_users: dict[str, SeenUser] = {}  # by sub
        self._seen: set[str] = set()  # sessions whose lastSeenAt changed since the last write
        self._gone: set[str] = set()  # sessions found expired, to delete from the store
        self.on_change: Callable[[], None] | None = None  # a session ended: its streams close (auth/_credentials)
        self._writes = 0  # bumped by every write of this daemon: a reload that overlapped one reads again

    # ---- dashboard sessions, kept across restarts ------------------------------------------------------
    async def open(self) -> None:
        """Load the dashboard sessions that have not expired (after moving an earlier version's file into the
        store); expired ones are deleted."""
        if self.store is None:
            return
        if self.legacy_file is not None:
            await migrate_legacy(self.legacy_file, _read_legacy, self._put_all)
        now = time.time() * 1000
        for key, v in (await self.store.list()).items():
            s = _session_of(key, v)
            if s is None or s.expires_at_ms <= now:
                await self.store.delete(key)
                continue
            self.sessions[key] = s

    async def reload(self, key: str | None = None) -> None:
        """Another node changed dashboard session ``key`` (None: any) in the store: re-read it (or them all). One
        gone from the store (signed out through another node) stops working here at once and ``on_change`` ends
        the streams it opened; one signed in through another node works here too. Raises the store's error
        (StoreUnavailable) for the caller to retry."""
        if self.store is None:
            return
        for _ in range(3):  # a read that overlapped a write of this daemon may predate it: read again
            writes = self._writes
            if key is None:
                docs = await self.store.list()
            else:
                doc = await self.store.get(key)
                docs = {} if doc is None else {key: doc}
            if writes == self._writes:
                break
        else:
            return
        now = time.time() * 1000
        found: dict[str, DashboardSession] = {}
        for k, v in docs.items():
            s = _session_of(k, v)
            if s is not None and s.expires_at_ms > now:
                found[k] = s
        gone = [k for k in self.sessions if k not in found] if key is None else [] if key in found else [key]
        ended = False
        for k in gone:
            ended = self.sessions.pop(k, None) is not None or ended
            self._seen.discard(k)
        for k, s in found.items():
            old = self.sessions.get(k)
            if old is not None:
                s.last_seen_ms = max(s.last_seen_ms, old.last_seen_ms)
            self.sessions[k] = s
        if ended and self.on_change is not None:
            self.on_change()

    async def _put_all(self, raw: dict[str, Any]) -> None:
        assert self.store is not None
        for key, v in raw.items():
            await self.store.put(key, v)

    async def _save(self, key: str) -> None:
        s = self.sessions.get(key)
        if self.store is None or s is None:
            return
        self._writes += 1
        try:
            await self.store.put(key, _doc_of(s))
        except Exception as exc:  # noqa: BLE001 - sign-ins still work; they would not survive a restart
            log.error("oidc.sessions_not_saved", error=str(exc))

    async def _delete(self, key: str) -> None:
        if self.store is not None:
            self._writes += 1
            await self.store.delete(key)

    async def _write_seen(self) -> None:
        """Write what session() noted: lastSeenAt (like API keys' lastUsedAt, at most every SEEN_FLUSH_S) and
        expired sessions."""
        seen, self._seen = self._seen, set()
        gone, self._gone = self._gone, set()
        for key in gone:
            try:
                await self._delete(key)
            except Exception as exc:  # noqa: BLE001 - deleted at the next start instead
                log.warning("oidc.session_not_deleted", error=str(exc))
        for key in seen - gone:
            await self._save(key)

    async def end_session(self, sid: str) -> None:
        key = _digest(sid)
        if key in self.sessions:
            await self._delete(key)  # gone from the store before the sign-out is acknowledged
            self.sessions.pop(key, None)
            if self.on_change is not None:
                self.on_change()

    @property
    def audience(self) -> str:
        return self.cfg.audience or self.cfg.clientId

    @property
    def redirect_uri(self) -> str:
        return self._base_url().rstrip("/") + "/auth/callback"

    # ---- keys --------------------------------------------------------------------------------------
    async def fetch(self, client: Any) -> None:
        import jwt

        issuer = self.cfg.issuer.rstrip("/")
        resp = await client.get(issuer + "/.well-known/openid-configuration")
        resp.raise_for_status()
        disc = resp.json()
        if disc.get("issuer", "").rstrip("/") != issuer:
            raise ValueError(f"the IdP says its issuer is {disc.get('issuer')!r}, not {issuer!r}")
        keys = await client.get(disc["jwks_uri"])
        keys.raise_for_status()
        self._jwks = jwt.PyJWKSet.from_dict(keys.json())
        self.discovery = disc
        self._last_fetch = time.monotonic()
        self.error = None
        self.ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep discovery and signing keys fresh; retry with backoff while the IdP is unreachable."""
        import httpx

        task_status.started()
        delay = 1.0
        async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
            nursery.start_soon(self._seen_writer)
            while True:
                try:
                    await self.fetch(client)
                    delay = 1.0
                    log.info("oidc.keys_loaded", issuer=self.cfg.issuer, keys=len(self._jwks.keys))
                    wait = REFRESH_S
                except Exception as exc:  # noqa: BLE001 - the IdP may be down; tokens wait for it
                    self.error = f"{type(exc).__name__}: {exc}"
                    log.warning("oidc.fetch_failed", issuer=self.cfg.issuer, error=self.error)
                    wait, delay = delay, min(delay * 2, 60.0)
                with trio.move_on_after(wait):
                    await self._refetch.wait()
                self._refetch = trio.Event()
                since = time.monotonic() - self._last_fetch
                if since < MIN_REFETCH_S:
                    await trio.sleep(MIN_REFETCH_S - since)

    async def _seen_writer(self) -> None:
        while True:
            await trio.sleep(SEEN_FLUSH_S)
            await self._write_seen()

    # ---- tokens ------------------------------------------------------------------------------------
    def verify(self, token: str, *, nonce: str | None = None, audience: str | None = None) -> dict[str, Any]:
        """The claims of a valid token; ValueError saying why not."""
        import jwt

        if self._jwks is None:
            raise ValueError(f"the identity provider's keys are not loaded yet ({self.error or 'starting'})")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise ValueError(f"malformed token: {exc}") from None
        key = next((k for k in self._jwks.keys if k.key_id == kid), None)
        if key is None:
            self._refetch.set()  # a rotated key: fetch the set again (at most every 30 s)
            raise ValueError(f"unknown signing key {kid!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                audience=audience or self.audience, issuer=self.cfg.issuer.rstrip("/"), leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "sub"]})
        except jwt.PyJWTError as exc:
            raise ValueError(str(exc)) from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise ValueError("the ID token's nonce does not match this sign-in")
        return claims

    def principal(self, claims: dict[str, Any]) -> Principal:
        from aegisd.auth.principal import Principal

        role = claims.get(self.cfg.roleClaim)
        if role not in ROLES:
            role = self.cfg.defaultRole
        who = claims.get("email") or claims.get("preferred_username") or claims["sub"]
        # a bearer token works until its exp (and the leeway verify() grants); a dashboard session replaces this
        until = (int(claims["exp"]) + LEEWAY_S) * 1000 if isinstance(claims.get("exp"), (int, float)) else None
        return Principal(kind="oidc", key_id=f"oidc:{claims['sub']}", role=str(role), name=f"oidc:{who}",
                         credential=Credential("jwt", str(claims["sub"]), until))

    def authenticate(self, token: str) -> Principal | None:
        try:
            claims = self.verify(token)
        except ValueError as exc:
            log.info("oidc.token_refused", reason=str(exc))
            return None
        principal = self.principal(claims)
        sub = str(claims["sub"])
        if sub not in self.bearer_users and len(self.bearer_users) >= MAX_SEEN:
            oldest = min(self.bearer_users, key=lambda k: self.bearer_users[k].last_seen_ms)
            del self.bearer_users[oldest]
        self.bearer_users[sub] = SeenUser(identity=_identity(claims), role=principal.role,
                                          last_seen_ms=int(time.time() * 1000))
        return principal

    def users(self) -> list[dict[str, Any]]:
        """Everyone seen through single sign-on, one entry per subject: dashboard sign-ins (kept across restarts)
        and bearer tokens (since the daemon started). Identity and role only: never a cookie or its digest."""
        now_ms = time.time() * 1000
        out: dict[str, dict[str, Any]] = {}

        def entry(sub: str, identity: dict[str, Any], role: str) -> dict[str, Any]:
            return out.setdefault(sub, {"principal": f"oidc:{sub}", "sub": sub, "email": identity.get("email"),
                                        "name": identity.get("name"), "role": role, "lastSeenAt": None,
                                        "signedInAt": None, "expiresAt": None, "signIns": 0, "via": []})

        for s in sorted(self.sessions.values(), key=lambda s: s.created_at_ms):
            if s.expires_at_ms < now_ms:
                continue
            sub = str(s.identity.get("sub") or (s.principal.key_id or "")[len("oidc:"):])
            u = entry(sub, s.identity, s.principal.role)
            u["role"] = s.principal.role  # the latest sign-in's
            u["signIns"] += 1
            u["signedInAt"] = max(u["signedInAt"] or 0, s.created_at_ms) or None
            u["expiresAt"] = max(u["expiresAt"] or 0, s.expires_at_ms)
            u["lastSeenAt"] = max(u["lastSeenAt"] or 0, s.last_seen_ms, s.created_at_ms) or None
            if "dashboard" not in u["via"]:
                u["via"].append("dashboard")
        for sub, seen in self.bearer_users.items():
            u = entry(sub, seen.identity, seen.role)
            if seen.last_seen_ms >= (u["lastSeenAt"] or 0):
                u["role"] = seen.role
            u["lastSeenAt"] = max(u["lastSeenAt"] or 0, seen.last_seen_ms)
            u["via"].append("bearer")
        return sorted(out.values(), key=lambda u: -(u["lastSeenAt"] or 0))

    # ---- the dashboard's sign-in (authorization code + PKCE) ---------------------------------------
    def _endpoint(self, name: str) -> str:
        if self.discovery is None or not self.discovery.get(name):
            raise Unavailable(f"the identity provider is not reachable yet ({self.error or 'starting'})")
        return str(self.discovery[name])

    def login_url(self) -> tuple[str, str]:
        """(where to send the browser, the value for its state cookie)."""
        now = time.monotonic()
        for k in [k for k, v in self._logins.items() if now - v.created > LOGIN_TTL_S]:
            del self._logins[k]
        if len(self._logins) > 10_000:
            raise Unavailable("too many sign-ins in progress")
        state, verifier, nonce, browser = (secrets.token_urlsafe(24) for _ in range(4))
        self._logins[state] = _Login(verifier=verifier, nonce=nonce, browser=browser)
        query = urlencode({"response_type": "code", "client_id": self.cfg.clientId, "redirect_uri": self.redirect_uri,
                           "scope": self.cfg.scopes, "state": state, "nonce": nonce,
                           "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
                           "code_challenge_method": "S256"})
        return f"{self._endpoint('authorization_endpoint')}?{query}", browser

    async def callback(self, *, code: str, state: str, browser: str) -> tuple[str, DashboardSession]:
        login = self._logins.pop(state, None)
        if login is None or time.monotonic() - login.created > LOGIN_TTL_S:
            raise ValidationError("this sign-in expired or was already used; start again")
        if not secrets.compare_digest(login.browser, browser):
            raise ValidationError("this sign-in was started in another browser")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "client_id": self.cfg.clientId, "code_verifier": login.verifier}
        tokens = await self._token_request(form)
        if "id_token" not in tokens:
            raise IdpError("the identity provider returned no ID token")
        try:
            claims = self.verify(tokens["id_token"], nonce=login.nonce, audience=self.cfg.clientId)
        except ValueError as exc:
            raise IdpError(f"the ID token was refused: {exc}") from None
        sid = "dsh_" + secrets.token_urlsafe(32)
        now_ms = time.time() * 1000
        for k in [k for k, v in self.sessions.items() if v.expires_at_ms < now_ms]:
            del self.sessions[k]
            self._gone.add(k)
        principal = self.principal(claims)
        principal.credential = Credential("sso", _digest(sid))  # ends with the session, not the ID token
        session = DashboardSession(principal=principal, identity=_identity(claims),
                                   expires_at_ms=int(now_ms + SESSION_TTL_S * 1000), created_at_ms=int(now_ms),
                                   last_seen_ms=int(now_ms))
        self.sessions[_digest(sid)] = session
        await self._save(_digest(sid))
        await self._write_seen()
        return sid, session

    def session(self, sid: str) -> DashboardSession | None:
        if not sid:
            return None
        key = _digest(sid)
        s = self.sessions.get(key)
        if s is None:
            return None
        now_ms = time.time() * 1000
        if s.expires_at_ms < now_ms:
            del self.sessions[key]
            self._gone.add(key)
            return None
        s.last_seen_ms = int(now_ms)
        self._seen.add(key)  # written within SEEN_FLUSH_S, like API keys' lastUsedAt: not on every request
        return s

    # ---- the device flow, proxied ------------------------------------------------------------------
    async def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        status, body = await self._post("token_endpoint", form)
        if status >= 400:
            raise IdpError(f"the identity provider refused: {body.get('error_description') or body.get('error')}")
        return body

    async def _post(self, endpoint: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        import httpx

        url = self._endpoint(endpoint)
        if self.cfg.clientSecret:
            form = {**form, "client_secret": self.cfg.clientSecret}
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                resp = await client.post(url, data=form, headers={"Accept": "application/json"})
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IdpError(f"the identity provider did not answer properly: {exc}") from None
        if not isinstance(body, dict):
            raise IdpError("the identity provider answered something other than a JSON object")
        return resp.status_code, body

    async def device_authorize(self, client_id: str, scope: str | None) -> tuple[int, dict[str, Any]]:
        self._check_client(client_id)
        return await self._post("device_authorization_endpoint",
                                {"client_id": client_id, "scope": scope or self.cfg.scopes})

    async def device_token(self, client_id: str, device_code: str) -> tuple[int, dict[str, Any]]:
        self._check_client(client_id)
        return await self._post("token_endpoint", {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                                   "device_code": device_code, "client_id": client_id})

    async def refresh(self, client_id: str, refresh_token: str) -> tuple[int, dict[str, Any]]:
        self._check_client(client_id)
        return await self._post("token_endpoint", {"grant_type": "refresh_token", "refresh_token": refresh_token,
                                                   "client_id": client_id})

    def _check_client(self, client_id: str) -> None:
        if not secrets.compare_digest(client_id, self.cfg.clientId):
            raise ValidationError("client_id does not match this server's OIDC client")
