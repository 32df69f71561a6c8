"""Access control in one place: who a credential is (authenticate), what a principal may call (authorize), which
sessions and objects it may see and act on (ownership), and the audit trail of it all.

Every surface authenticates with `Access.authenticate` (or a surface's own evidence: the control socket's peer,
the agent tracing of aegisd/auth/callers.py); every operation is authorized with `Access.authorize` before it
runs; every session lookup goes through `Access.session`, which resolves id prefixes among the caller's own
sessions only."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from aegisd.auth._agents import AGENT_ACCESS, created_by
from aegisd.auth._keys import KeyStore, effective_permissions, secret_digest
from aegisd.auth.audit import AuditLog
from aegisd.auth.principal import Credential, Principal
from aegisd.core.config import Config, read_config_file
from aegisd.core.errors import Forbidden, SessionForbidden, Unauthorized, Unavailable
from aegisd.core.models import SessionRecord

if TYPE_CHECKING:
    from aegisd.auth.oidc import Oidc

log = structlog.get_logger("aegisd")

ROLE_PERMS = {"admin": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
              "operator": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
              "viewer": frozenset({"audit"})}


class SessionIndex(Protocol):
    """What access control needs of the session manager."""

    records: dict[str, SessionRecord]

    def resolve_id(self, ident: str, *, among: Callable[[str], bool] | None = None) -> str: ...


class ConfigWatch:
    """Values of the config file that apply without a restart (unless set by env or flag)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._path = Path(config.configPath) if config.configPath else None
        self._mtime: float | None = None
        self._data: dict[str, Any] = {}

    def value(self, key: str, current: Any) -> Any:
        if self._path is None or self._config.sources.get(key, "").startswith(("env:", "flag")):
            return current
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return current
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._data = read_config_file(self._path)
            except Exception:  # noqa: BLE001 - keep the last good values on a broken edit
                pass
        return self._data.get(key, current) if isinstance(self._data.get(key, current), type(current)) else current


class Access:
    def __init__(self, *, config: Config, keys: KeyStore, audit: AuditLog, sessions: SessionIndex,
                 oidc: Oidc | None = None, draining: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.keys = keys
        self.audit = audit
        self.sessions = sessions
        self.oidc = oidc
        self._draining = draining
        self._config_watch = ConfigWatch(config)

    # ---- who: authentication --------------------------------------------------------------------
    @property
    def auth_token(self) -> str:
        """The master token, re-read when the config file changes (unless it came from env or a flag)."""
        value: str = self._config_watch.value("authToken", self.config.authToken)
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_token) or self.keys.has_keys() or self.oidc is not None

    def authenticate(self, token: str) -> Principal | None:
        master = self.auth_token
        if master and hmac.compare_digest(token.encode(), master.encode()):
            return Principal(kind="master", role="admin", name="master")
        if self.oidc is not None and token.startswith("ey"):
            from aegisd.auth.oidc import looks_like_jwt

            if looks_like_jwt(token):
                return self.oidc.authenticate(token)
        key = self.keys.authenticate(token) if token.startswith("aegis_") else None
        if key is None:
            return None
        return Principal(kind="key", key_id=key.id, role=key.role, name=f"key:{key.name}",
                         permissions=effective_permissions(key), credential=Credential("key", secret_digest(token)))

    def note_auth_failure(self, ip: str, *, via: str | None = None) -> None:
        self.record(None, "auth.failure", detail={"ip": ip} if via is None else {"ip": ip, "via": via})

    # ---- what: authorization --------------------------------------------------------------------
    def authorize(self, principal: Principal, op_name: str, permission: str | None, params: Any) -> None:
        """Raise unless ``principal`` may call the operation (its `permission`, see aegisd/ops/_registry.py)."""
        perm = permission
        if self._draining() and perm == "create":
            raise Unavailable("the daemon is shutting down")
        p = principal
        if p.kind == "agent":
            self._authorize_agent(p, op_name, params)
            return
        if perm == "public":
            return
        if p.kind == "anonymous":
            raise Unauthorized("authentication required")
        if perm == "admin" and p.role != "admin":
            raise Forbidden(f"{op_name} needs the admin role (you are {p.role})")
        if perm == "operator" and p.role not in ("admin", "operator"):
            raise Forbidden(f"{op_name} needs the admin or operator role (you are {p.role})")
        if perm in ("create", "send", "approve", "reject", "kill") and p.role != "admin":
            allowed = p.permissions if p.permissions is not None else ROLE_PERMS.get(p.role, frozenset())
            if perm not in allowed:
                raise Forbidden(f"{op_name} needs the {perm!r} permission (role {p.role})")

    def _authorize_agent(self, p: Principal, op_name: str, params: Any) -> None:
        """A caller inside a session's process tree: see aegisd/auth/_agents.py."""
        access = AGENT_ACCESS.get(op_name)
        if access is None:
            raise Forbidden(f"{op_name} is not available to a session's agent or its tools (this caller runs "
                            f"inside session {p.session_id})")
        target = getattr(params, "id", None)
        if access == "act" and isinstance(target, str):
            self.session(p, target, act=True)

    # ---- which: ownership --------------------------------------------------------------------
    # Every object a caller creates (session, template, memory entry, pipeline) records owner_of(); owns()
    # decides who may see and act on it. Every ownership check goes through these two (sessions through
    # can_see, which scopes agents to their own session tree first).
    def creator(self, p: Principal) -> tuple[str | None, str | None]:
        """(ownerKeyId, creatorSessionId) of a session this caller creates: an agent's sessions belong to the
        key that owns the agent's own session, and record the agent's session as their creator."""
        if p.kind != "agent" or p.session_id is None:
            return p.key_id, None
        own = self.sessions.records.get(p.session_id)
        return (own.ownerKeyId if own is not None else None), p.session_id

    def owner_of(self, p: Principal) -> str | None:
        """The owner id recorded on what this caller creates: its key (None: the master token and local callers);
        an agent's is the owner of its own session."""
        return self.creator(p)[0]

    def owns(self, p: Principal, owner: str | None) -> bool:
        """May this caller see (and, with the role's permission, act on) an object recorded with ``owner``?
        Admins and local callers (a strict-RBAC local viewer reads everything): all; keys and SSO principals:
        only their own; an agent: its session owner's (what it may do at all is auth/_agents.py's allow-list)."""
        if p.kind == "agent":
            return owner == self.owner_of(p)
        if p.role == "admin" or p.kind in ("master", "local"):
            return True
        return owner is not None and owner == p.key_id

    def can_see(self, p: Principal, session_id: str) -> bool:
        if p.kind == "agent":
            return session_id == p.session_id or created_by(self.sessions.records, session_id, p.session_id or "")
        rec = self.sessions.records.get(session_id)
        if rec is None:  # not a session (a pipeline's events): admins only
            return p.role == "admin"
        return self.owns(p, rec.ownerKeyId)

    def can_act(self, p: Principal, session_id: str) -> bool:
        """Whether the caller may change this session (beyond reading it). Only agents are limited here: never
        their own session, only the ones they created; roles and permissions are checked in authorize()."""
        if p.kind != "agent":
            return self.can_see(p, session_id)
        return created_by(self.sessions.records, session_id, p.session_id or "")

    def visible(self, p: Principal, recs: Iterable[SessionRecord]) -> list[SessionRecord]:
        return [r for r in recs if self.can_see(p, r.id)]

    def session(self, p: Principal, ident: str, *, act: bool = False) -> SessionRecord:
        """The session a full id or a unique prefix names. A prefix is resolved among the sessions this caller
        can see only, so neither the answer nor an ambiguity error tells anything about other keys' sessions;
        another key's session named by its full id is 403."""
        records = self.sessions.records
        if ident in records:
            if not self.can_see(p, ident):
                raise SessionForbidden(f"session {ident} belongs to another key")
            rec = records[ident]
        else:
            rec = records[self.sessions.resolve_id(ident, among=lambda sid: self.can_see(p, sid))]
        if act and not self.can_act(p, rec.id):
            raise SessionForbidden(f"an agent may not act on its own session {rec.id}: only on sessions it created")
        return rec

    # ---- the trail ------------------------------------------------------------------------------
    def record(self, p: Principal | None, action: str, *, session_id: str | None = None, detail: Any = None) -> None:
        actor = p.name if p is not None else "system"
        try:
            self.audit.record(actor, action, session_id=session_id, detail=detail)
        except OSError as exc:  # the audit must not take the daemon down; it is logged loudly instead
            log.error("audit.write_failed", action=action, error=str(exc))
