"""Access control operations: API keys, token verification, SSE tokens, who is calling, the Users view, the
audit log."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from aegisd.core.errors import Forbidden, NotFound, ValidationError
from aegisd.core.models import SessionRecord, now_ms
from aegisd.core.states import LIVE
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Empty, Ok, SessionBrief

Role = Annotated[str, msgspec.Meta(pattern="^(admin|operator|viewer)$")]
PERMISSIONS = ("create", "send", "approve", "reject", "kill", "audit")


class CreateKeyParams(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    role: Role = "viewer"
    permissions: list[str] | None = None
    ttlDays: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None
    rateLimit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    tenantId: str | None = None


class KeyIdParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class RotateParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str | None = None
    keyId: str | None = None
    gracePeriodSeconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 3600
    ttlDays: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class TokenParams(msgspec.Struct, forbid_unknown_fields=True):
    token: str


class AuditParams(msgspec.Struct, forbid_unknown_fields=True):
    actor: str | None = None
    action: str | None = None
    sessionId: str | None = None
    since: int | None = None
    until: int | None = None
    cursor: int | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    reverse: bool = False
    verify: bool = False


class QuotaParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    # left out: keep; null: remove
    maxConcurrentSessions: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None | msgspec.UnsetType = msgspec.UNSET
    maxTokensPerWindow: Annotated[int, msgspec.Meta(ge=1)] | None | msgspec.UnsetType = msgspec.UNSET
    maxSpendPerWindow: Annotated[float, msgspec.Meta(ge=0)] | None | msgspec.UnsetType = msgspec.UNSET
    quotaWindowMs: Annotated[int, msgspec.Meta(ge=60_000, le=30 * 86_400_000)] | None | msgspec.UnsetType = \
        msgspec.UNSET
    clear: bool = False  # true: remove every quota of the key


# ---- results -----------------------------------------------------------------------------------------
class KeyView(msgspec.Struct):
    """An API key as listed: never its secret or hash."""

    id: str
    name: str
    role: str
    permissions: list[str] | None
    createdAt: int
    expiresAt: int | None
    lastUsedAt: int | None
    rateLimit: int
    quotas: dict[str, Any] | None


class NewKey(KeyView, kw_only=True):
    key: str  # the secret, shown once
    tenantId: str | None


class RotatedKey(KeyView, kw_only=True):
    key: str  # the new secret, shown once
    graceExpiresAt: int | None  # when the old secret stops working


class QuotaUsage(msgspec.Struct):
    activeSessions: int
    tokensInWindow: int
    spendInWindowUsd: float
    windowMs: int
    windowStart: int
    windowFreesAt: int | None


class KeyQuotas(msgspec.Struct):
    keyId: str
    quotas: dict[str, Any] | None
    usage: QuotaUsage


class Verified(msgspec.Struct, kw_only=True):
    valid: bool
    role: str | UnsetType = UNSET
    name: str | UnsetType = UNSET


class SseToken(msgspec.Struct):
    token: str
    expiresAt: int


class WhoAmI(msgspec.Struct):
    kind: str  # local | master | key | oidc | agent
    role: str
    name: str
    keyId: str | None
    permissions: list[str]
    sessionId: str | None  # kind agent: the session whose process tree is calling
    authRequired: bool  # whether this daemon asks for a credential at all (false: zero-config)
    sso: bool  # single sign-on is set up
    strictRbac: bool


class UserKey(KeyView, kw_only=True):
    usage: QuotaUsage  # over the key's quota window (an hour without one)
    sessionCount: int
    liveSessions: int
    sessions: list[SessionBrief]  # the newest 20


class SsoUser(msgspec.Struct):
    principal: str  # oidc:<sub>: the owner recorded on the sessions it creates
    sub: str
    email: str | None
    name: str | None
    role: str
    lastSeenAt: float | None
    signedInAt: float | None  # the latest dashboard sign-in still open
    expiresAt: float | None
    signIns: int  # dashboard sign-ins open
    via: list[str]  # dashboard | bearer
    sessionCount: int
    liveSessions: int
    sessions: list[SessionBrief]


class OtherOwner(msgspec.Struct):
    owner: str | None  # None: the master token and local callers; else a key or SSO user no longer listed
    sessionCount: int
    liveSessions: int
    sessions: list[SessionBrief]


class UsersView(msgspec.Struct):
    keys: list[UserKey]
    ssoUsers: list[SsoUser]
    otherOwners: list[OtherOwner]
    oidc: bool
    generatedAt: int


class AuditPage(msgspec.Struct, kw_only=True):
    count: int
    records: list[dict[str, Any]]
    cursor: int | None
    filters: dict[str, Any]
    integrity: dict[str, Any] | UnsetType = UNSET  # with verify: {ok, count, lastHash | badSeq, reason}


def _key_fields(k: Any) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "role": k.role, "permissions": k.permissions,
            "createdAt": k.createdAt, "expiresAt": k.expiresAt, "lastUsedAt": k.lastUsedAt,
            "rateLimit": k.rateLimit, "quotas": k.quotas}


def key_view(k: Any) -> KeyView:
    return KeyView(**_key_fields(k))


def _check_permissions(perms: list[str] | None) -> None:
    for p in perms or []:
        if p not in PERMISSIONS:
            raise ValidationError(f"unknown permission {p!r}; use {', '.join(PERMISSIONS)}")


@op("auth.keys.create", CreateKeyParams, result=NewKey, permission="admin",
    summary="Create an API key (the secret is shown once)")
async def create_key(ctx: OpContext, p: CreateKeyParams) -> NewKey:
    _check_permissions(p.permissions)
    info, secret = ctx.services.keys.create(p.name, role=p.role, permissions=p.permissions, ttl_days=p.ttlDays,
                                          rate_limit=p.rateLimit)
    ctx.audit("key.create", detail={"keyId": info.id, "name": info.name, "role": info.role})
    return NewKey(**_key_fields(info), key=secret, tenantId=p.tenantId)


@op("auth.keys.list", Empty, result=list[KeyView], permission="admin", summary="List API keys (never their secrets)")
async def list_keys(ctx: OpContext, p: Empty) -> list[KeyView]:
    return [key_view(k) for k in ctx.services.keys.list()]


@op("auth.keys.revoke", KeyIdParams, result=Ok, permission="admin", summary="Revoke an API key")
async def revoke_key(ctx: OpContext, p: KeyIdParams) -> Ok:
    if not ctx.services.keys.revoke(p.id):
        raise NotFound(f"API key {p.id} not found")
    ctx.audit("key.revoke", detail={"keyId": p.id})
    return Ok(ok=True)


@op("auth.keys.rotate", RotateParams, result=RotatedKey, permission="admin",
    summary="Rotate an API key; the old secret works for the grace period")
async def rotate_key(ctx: OpContext, p: RotateParams) -> RotatedKey:
    key_id = p.id or p.keyId
    if not key_id:
        raise ValidationError("keyId is required")
    info, secret = ctx.services.keys.rotate(key_id, grace_seconds=p.gracePeriodSeconds, ttl_days=p.ttlDays)
    ctx.audit("key.rotate", detail={"keyId": key_id, "graceSeconds": p.gracePeriodSeconds})
    return RotatedKey(**_key_fields(info), key=secret, graceExpiresAt=info.graceExpiresAt)


@op("auth.keys.quotas.get", KeyIdParams, result=KeyQuotas, permission="admin",
    summary="A key's quotas (concurrent sessions; tokens and estimated spend per window) and its usage now")
async def get_quotas(ctx: OpContext, p: KeyIdParams) -> KeyQuotas:
    from aegisd.features.quotas import parse

    key = ctx.services.keys.get(p.id)
    quotas = parse(key.quotas)
    return KeyQuotas(keyId=key.id, quotas=key.quotas, usage=QuotaUsage(**ctx.services.quotas.usage_of(key.id, quotas)))


@op("auth.keys.quotas.set", QuotaParams, result=KeyView, permission="admin",
    summary="Set a key's quotas; fields left out keep their value, null removes one, clear removes all")
async def set_quotas(ctx: OpContext, p: QuotaParams) -> KeyView:
    from aegisd.features.quotas import parse

    key = ctx.services.keys.get(p.id)
    merged: dict[str, Any] = {} if p.clear else dict(key.quotas or {})
    given = {f: getattr(p, f) for f in ("maxConcurrentSessions", "maxTokensPerWindow", "maxSpendPerWindow",
                                        "quotaWindowMs")}
    for name, value in given.items():
        if value is None:
            merged.pop(name, None)
        elif value is not msgspec.UNSET:
            merged[name] = value
    quotas = parse(merged)
    stored = {**msgspec.to_builtins(quotas), "quotaWindowMs": quotas.quotaWindowMs} if quotas is not None else None
    key = ctx.services.keys.set_quotas(p.id, stored)
    ctx.audit("key.quotas", detail={"keyId": p.id, "quotas": stored})
    return key_view(key)


@op("auth.verify", TokenParams, result=Verified, permission="public",
    summary="Is this token valid, and with which role? (Throttled and audited like any failed authentication)")
async def verify(ctx: OpContext, p: TokenParams) -> Verified:
    # an oracle for guessing tokens unless it is throttled and audited like any failed authentication
    d = ctx.services
    d.auth_throttle.guard(ctx.ip, p.token)
    principal = d.access.authenticate(p.token)
    if principal is None:
        d.auth_throttle.failed(ctx.ip, p.token)
        d.access.note_auth_failure(ctx.ip, via="auth.verify")
        return Verified(valid=False)
    d.auth_throttle.succeeded(ctx.ip, p.token)
    return Verified(valid=True, role=principal.role, name=principal.name)


@op("auth.sse_token", Empty, result=SseToken, summary="A short-lived single-use token for EventSource (?token=)")
async def sse_token(ctx: OpContext, p: Empty) -> SseToken:
    owner = f"{ctx.principal.kind}:{ctx.principal.key_id}"
    token, ttl = ctx.services.sse_tokens.mint(ctx.principal, owner)
    ctx.services.auth_throttle.vouch(ctx.ip, token)  # minted by a caller proven valid from there
    return SseToken(token=token, expiresAt=now_ms() + int(ttl * 1000))


@op("auth.whoami", Empty, result=WhoAmI,
    summary="Who the caller is: kind (local, master, key, oidc, agent), role, name, key id, permissions, its "
            "session (an agent), and whether the daemon asks for authentication at all")
async def whoami(ctx: OpContext, p: Empty) -> WhoAmI:
    from aegisd.auth import ROLE_PERMISSIONS

    d = ctx.services
    pr = ctx.principal
    perms = pr.permissions if pr.permissions is not None else ROLE_PERMISSIONS.get(pr.role, frozenset())
    return WhoAmI(kind=pr.kind, role=pr.role, name=pr.name, keyId=pr.key_id,
                  permissions=sorted(ROLE_PERMISSIONS["admin"] if pr.role == "admin" else perms),
                  # for `ag whoami`: an agent's session; and whether this daemon wants a credential at all
                  sessionId=pr.session_id, authRequired=d.access.auth_enabled, sso=d.oidc is not None,
                  strictRbac=d.config.strictRbac)


USER_SESSIONS = 20  # sessions listed per owner (newest first); sessionCount has them all


def _owned(recs: list[SessionRecord]) -> dict[str, Any]:
    return {"sessionCount": len(recs), "liveSessions": sum(1 for r in recs if r.status in LIVE),
            "sessions": [SessionBrief(id=r.id, name=r.name, status=r.status.value, createdAt=r.createdAt)
                         for r in recs[:USER_SESSIONS]]}


@op("auth.users", Empty, result=UsersView, permission="admin",
    summary="The Users view: API keys with their quotas and use, single sign-on users seen, and the sessions each "
            "owns (never a secret or a hash)")
async def users(ctx: OpContext, p: Empty) -> UsersView:
    from aegisd.features.quotas import parse

    d = ctx.services
    by_owner: dict[str | None, list[SessionRecord]] = {}
    for rec in d.manager.list():  # newest first
        by_owner.setdefault(rec.ownerKeyId, []).append(rec)
    keys = []
    for k in d.keys.list():
        keys.append(UserKey(**_key_fields(k), usage=QuotaUsage(**d.quotas.usage_of(k.id, parse(k.quotas))),
                            **_owned(by_owner.pop(k.id, []))))
    sso = [SsoUser(**u, **_owned(by_owner.pop(u["principal"], [])))
           for u in (d.oidc.users() if d.oidc is not None else [])]
    # the master token and local callers (no owner), and owners no longer listed (a revoked key, an SSO user
    # whose sign-in ended)
    others = [OtherOwner(owner=owner, **_owned(recs))
              for owner, recs in sorted(by_owner.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))]
    return UsersView(keys=keys, ssoUsers=sso, otherOwners=others, oidc=d.oidc is not None, generatedAt=now_ms())


@op("audit.query", AuditParams, result=AuditPage, permission="audit_admin",
    summary="Query (and verify) the hash-chained audit log")
async def audit_query(ctx: OpContext, p: AuditParams) -> AuditPage:
    if ctx.principal.role != "admin":
        raise Forbidden("the audit log is for admins")
    log = ctx.services.audit
    records, cursor = log.query(actor=p.actor, action=p.action, session_id=p.sessionId, since=p.since,
                                until=p.until, cursor=p.cursor, limit=p.limit, reverse=p.reverse)
    return AuditPage(count=len(records), records=records, cursor=cursor,
                     filters={k: v for k, v in msgspec.to_builtins(p).items()
                              if v not in (None, False) and k not in ("limit",)},
                     integrity=log.verify() if p.verify else UNSET)
