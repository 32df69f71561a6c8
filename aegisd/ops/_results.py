"""Typed results of the operations: the OpenAPI document is generated from these, and tests check that real
responses decode into them."""

from __future__ import annotations

from typing import Any

import msgspec

from aegisd.core.models import PendingPermission, SessionRecord, TranscriptEntry


class SessionView(SessionRecord, kw_only=True):
    label: str = ""
    actionHints: dict[str, Any] | None = None
    reused: bool | None = None
    promptDelivery: dict[str, Any] | None = None


class SessionWait(SessionView, kw_only=True):
    timedOut: bool  # the timeout passed before the session needed attention


class ModeSet(msgspec.Struct):
    ok: bool
    permissionMode: str
    currentMode: str | None  # the agent's own mode id, when it has modes
    appliedBy: str  # agent (ACP session/set_mode) | daemon


class PendingRequest(PendingPermission, kw_only=True):
    sessionId: str
    sessionName: str
    position: int  # 0: the request approve/reject decides now; others wait behind it


class PendingList(msgspec.Struct):
    pending: list[PendingRequest]
    total: int


class Pagination(msgspec.Struct):
    page: int
    limit: int
    total: int
    totalPages: int


class SessionList(msgspec.Struct):
    sessions: list[SessionView]
    pagination: Pagination


class Health(msgspec.Struct):
    status: str
    timestamp: int
    version: str
    platform: str
    uptime: float
    sessions: dict[str, int]
    pid: int
    store: str


class Hello(msgspec.Struct):
    daemon: str
    version: str
    protocol: int
    pid: int
    stateDir: str
    httpUrl: str
    socket: str
    cgroups: str | None = None  # the daemon's per-session cgroup subtree, if it has one
    session: str | None = None  # for a caller inside a session's process tree: that session


class SessionHealth(msgspec.Struct):
    alive: bool
    windowExists: bool
    claudeRunning: bool
    paneCommand: str
    status: str
    hasTranscript: bool
    lastActivity: int
    lastActivityAgo: int
    sessionAge: int
    details: str
    pid: int | None
    queuedPrompts: int
    stderrTail: str | None


class SendResult(msgspec.Struct):
    ok: bool
    delivered: bool
    queued: bool
    attempts: int
    queuePosition: int | None = None


class ReadResult(msgspec.Struct):
    messages: list[TranscriptEntry]
    status: str
    statusText: str
    interactiveContent: str | None
    pendingPermission: PendingPermission | None = None


class TranscriptPage(msgspec.Struct):
    messages: list[TranscriptEntry]
    total: int
    page: int
    limit: int
    hasMore: bool


class Decision(msgspec.Struct):
    ok: bool
    optionId: str
    requestId: str  # the request decided


class Interrupted(msgspec.Struct):
    ok: bool
    interrupted: bool


class Ended(msgspec.Struct):
    ok: bool
    id: str
    status: str


class Ok(msgspec.Struct):
    ok: bool


class KeyView(msgspec.Struct):
    id: str
    name: str
    role: str
    permissions: list[str] | None
    createdAt: int
    expiresAt: int | None
    lastUsedAt: int | None
    rateLimit: int


class NewKey(KeyView, kw_only=True):
    key: str
    tenantId: str | None = None
    graceExpiresAt: int | None = None


class Verified(msgspec.Struct):
    valid: bool
    role: str | None = None
    name: str | None = None


class WhoAmI(msgspec.Struct):
    kind: str  # local | master | key | oidc | agent
    role: str
    name: str
    keyId: str | None
    permissions: list[str]
    sessionId: str | None = None  # kind agent: the session whose process tree is calling
    authRequired: bool = False  # whether this daemon asks for a credential at all (false: zero-config)
    sso: bool = False  # single sign-on is set up
    strictRbac: bool = False


class QuotaUsage(msgspec.Struct):
    activeSessions: int
    tokensInWindow: int
    spendInWindowUsd: float
    windowMs: int
    windowStart: int
    windowFreesAt: int | None


class SessionRef(msgspec.Struct):
    id: str
    name: str
    status: str
    createdAt: int


class UserKey(KeyView, kw_only=True):
    quotas: dict[str, Any] | None
    usage: QuotaUsage  # over the key's quota window (an hour without one)
    sessionCount: int
    liveSessions: int
    sessions: list[SessionRef]  # the newest 20


class SsoUser(msgspec.Struct):
    principal: str  # oidc:<sub>: the owner recorded on the sessions it creates
    sub: str
    email: str | None
    name: str | None
    role: str
    lastSeenAt: int | None
    signedInAt: int | None  # the latest dashboard sign-in still open
    expiresAt: int | None
    signIns: int  # dashboard sign-ins open
    via: list[str]  # dashboard | bearer
    sessionCount: int
    liveSessions: int
    sessions: list[SessionRef]


class OtherOwner(msgspec.Struct):
    owner: str | None  # None: the master token and local callers; else a key or SSO user no longer listed
    sessionCount: int
    liveSessions: int
    sessions: list[SessionRef]


class UsersView(msgspec.Struct):
    keys: list[UserKey]
    ssoUsers: list[SsoUser]
    otherOwners: list[OtherOwner]
    oidc: bool
    generatedAt: int


class SseToken(msgspec.Struct):
    token: str
    expiresAt: int


class AuditPage(msgspec.Struct):
    count: int
    records: list[dict[str, Any]]
    cursor: int | None
    filters: dict[str, Any]
    integrity: dict[str, Any] | None = None


class EventFrame(msgspec.Struct):
    id: int
    event: str
    sessionId: str
    timestamp: int
    data: dict[str, Any] = {}


class EventsPage(msgspec.Struct):
    events: list[EventFrame]
    lastId: int  # pass it as afterId next time
    timedOut: bool  # no event came within the timeout


class ErrorEnvelope(msgspec.Struct):
    error: str
    code: str
    message: str
    requestId: str
    details: Any = None


class PermissionsView(msgspec.Struct):
    permissionPolicy: list[dict[str, Any]] | None
    permissionProfile: dict[str, Any] | None


from aegisd.features.pipelines import PipelineRecord  # noqa: E402
from aegisd.features.templates import Template  # noqa: E402

RESULTS: dict[str, Any] = {
    "template.create": Template, "template.list": list[Template], "template.get": Template,
    "template.update": Template, "template.delete": Ok,
    "pipeline.create": PipelineRecord, "pipeline.list": list[PipelineRecord], "pipeline.get": PipelineRecord,
    "hello": Hello, "health": Health, "session.create": SessionView, "session.list": SessionList,
    "session.get": SessionView, "session.health": SessionHealth, "session.send": SendResult,
    "session.read": ReadResult, "session.transcript": TranscriptPage, "session.approve": Decision,
    "session.reject": Decision, "session.interrupt": Interrupted, "session.kill": Ended, "session.close": Ended,
    "session.follow": EventFrame, "events.follow": EventFrame,
    "auth.keys.create": NewKey, "auth.keys.list": list[KeyView], "auth.keys.revoke": Ok,
    "session.permissions.get": PermissionsView, "session.permissions.set": PermissionsView,
    "auth.keys.rotate": NewKey, "auth.verify": Verified, "auth.sse_token": SseToken, "audit.query": AuditPage,
    "auth.whoami": WhoAmI, "auth.users": UsersView,
    "session.wait": SessionWait, "session.set_mode": ModeSet, "permissions.pending": PendingList,
    "events.poll": EventsPage,
}
