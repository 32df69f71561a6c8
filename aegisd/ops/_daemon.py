"""The daemon itself: hello and health, stopping it, its JSON metrics and diagnostics, the list of operations,
capability negotiation, and where API v2 is not."""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from aegisd import PROTOCOL_VERSION, __version__
from aegisd.core.errors import Conflict, ValidationError
from aegisd.core.models import now_ms
from aegisd.core.states import LIVE
from aegisd.ops._registry import REGISTRY, OpContext, op
from aegisd.ops._types import Empty


class DiagnosticsParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class HandshakeParams(msgspec.Struct, forbid_unknown_fields=True):
    protocolVersion: str
    clientCapabilities: list[str] | None = None
    clientVersion: str | None = None


class Hello(msgspec.Struct, kw_only=True):
    daemon: str
    version: str
    protocol: int
    pid: int
    stateDir: str
    httpUrl: str
    socket: str
    cgroups: str | None  # the daemon's per-session cgroup subtree, if it has one
    session: str | None | UnsetType = UNSET  # for a caller inside a session's process tree: that session


class HealthSessions(msgspec.Struct):
    active: int
    total: int


class Health(msgspec.Struct, kw_only=True):
    status: str  # ok | degraded (the store is unavailable) | draining
    timestamp: int
    version: str
    platform: str
    uptime: float
    sessions: HealthSessions
    pid: int
    store: str  # the store's kind (file, postgres, redis) while it works; "degraded" while it is unavailable
    storeKind: str  # the store's kind, always
    storeReason: str | UnsetType = UNSET  # why the store is degraded (only then)
    storeDegradedSince: int | UnsetType = UNSET  # epoch ms the outage began (only then)


class Stopping(msgspec.Struct):
    stopping: bool
    pid: int
    httpUrl: str


class Summary(msgspec.Struct):
    min: float | None
    max: float | None
    avg: float | None
    count: int


class MetricsSessions(msgspec.Struct):
    total_created: int
    currently_active: int
    completed: int
    failed: int
    killed: int
    avg_duration_sec: float
    by_state: dict[str, int]


class EventMetrics(msgspec.Struct):
    published: int
    subscribers_dropped: int


class Latency(msgspec.Struct):
    permission_response_ms: Summary
    turn_duration_ms: Summary


class DaemonMetrics(msgspec.Struct):
    uptime: float
    sessions: MetricsSessions
    turns: int
    prompts: int
    approvals: int
    rejections: int
    auto_approvals: int
    auto_rejections: int
    agent_crashes: int
    screenshots_taken: int
    events: EventMetrics
    latency: Latency


class CrashAttributes(msgspec.Struct):
    reason: str
    exitCode: int | None
    signal: int | None
    agent: str


class Problem(msgspec.Struct):
    event: str
    level: str
    component: str
    operation: str | None
    sessionId: str
    errorCode: str | None
    timestamp: int | None
    attributes: CrashAttributes


class Diagnostics(msgspec.Struct):
    count: int
    events: list[Problem]


class Tool(msgspec.Struct):
    name: str
    description: str
    category: str
    permission: str | None
    streaming: bool


class Tools(msgspec.Struct):
    tools: list[Tool]
    categories: list[str]
    totalTools: int


class Handshake(msgspec.Struct):
    protocolVersion: str
    serverVersion: str
    serverCapabilities: list[str]
    negotiatedCapabilities: list[str]
    warnings: list[str]
    compatible: bool


class V2(msgspec.Struct):
    version: int
    status: str
    message: str
    migration_guide: str | None
    v1_base: str


@op("hello", Empty, result=Hello, summary="Daemon and protocol versions")
def hello(ctx: OpContext, p: Empty) -> Hello:
    d = ctx.services
    return Hello(daemon="aegisd", version=__version__, protocol=PROTOCOL_VERSION, pid=d.pid,
                 stateDir=str(d.config.state_path), httpUrl=d.http_url, socket=str(d.config.socket_path),
                 cgroups=str(d.cgroups.root) if d.cgroups is not None else None,
                 # a tool can learn which session it is scoped to
                 session=ctx.principal.session_id if ctx.principal.kind == "agent" else UNSET)


@op("health", Empty, result=Health, summary="Server health", permission="public")
def health(ctx: OpContext, p: Empty) -> Health:
    d = ctx.services
    m = d.manager
    sh = d.store.health
    status = "draining" if d.draining else "ok" if sh.ok else "degraded"
    return Health(status=status, timestamp=now_ms(), version=__version__,
                  platform=platform.system().lower(), uptime=round(time.time() - d.started_at, 3),
                  sessions=HealthSessions(active=sum(1 for r in m.records.values() if r.status in LIVE),
                                         total=len(m.records)),
                  pid=d.pid, store=d.store.name if sh.ok else "degraded", storeKind=d.store.name,
                  storeReason=UNSET if sh.ok else (sh.reason or "?"),
                  storeDegradedSince=UNSET if sh.ok or sh.since is None else int(sh.since * 1000))


@op("daemon.stop", Empty, result=Stopping, stream=True, permission="admin",
    summary="Stop the daemon as SIGTERM does (`ag stop`): one event {stopping, pid, httpUrl}, sent before it starts "
            "stopping; admins only, never a session's agent")
async def daemon_stop(ctx: OpContext, p: Empty) -> AsyncIterator[Stopping]:
    d = ctx.services
    ctx.audit("daemon.stop")
    # a stream, so that the answer is on the wire before the shutdown closes the connection: the surface sends
    # this event, then resumes the generator
    yield Stopping(stopping=True, pid=d.pid, httpUrl=d.http_url)
    d.request_stop()


@op("metrics", Empty, result=DaemonMetrics, summary="Daemon metrics (JSON)")
async def metrics(ctx: OpContext, p: Empty) -> DaemonMetrics:
    d = ctx.services
    m = d.manager.metrics
    recs = list(d.manager.records.values())
    ended = [r for r in recs if r.endedAt]
    by = Counter(r.status.value for r in recs)
    return DaemonMetrics(
        uptime=round(time.time() - d.started_at, 3),
        sessions=MetricsSessions(
            total_created=d.manager.created_total, currently_active=sum(1 for r in recs if r.status in LIVE),
            completed=by.get("completed", 0), failed=by.get("crashed", 0), killed=by.get("killed", 0),
            avg_duration_sec=round(sum((r.endedAt or 0) - r.createdAt for r in ended) / len(ended) / 1000, 3)
            if ended else 0, by_state=dict(by)),
        turns=m.turns, prompts=m.prompts, approvals=m.approvals, rejections=m.rejections,
        auto_approvals=m.auto_approvals, auto_rejections=m.auto_rejections, agent_crashes=m.crashes,
        screenshots_taken=m.screenshots,
        events=EventMetrics(published=d.bus.published, subscribers_dropped=d.bus.dropped_subscribers),
        latency=Latency(permission_response_ms=_summary(m.permission_latency.summary()),
                        turn_duration_ms=_summary(m.turn_duration.summary())))


def _summary(s: dict[str, Any]) -> Summary:
    return Summary(min=s["min"], max=s["max"], avg=s["avg"], count=s["count"])


@op("diagnostics", DiagnosticsParams, result=Diagnostics, summary="Recent problems (crashes), without personal data")
async def diagnostics(ctx: OpContext, p: DiagnosticsParams) -> Diagnostics:
    events: list[Problem] = []
    recs = ctx.visible(ctx.services.manager.records.values())  # others' sessions are not a viewer's
    for r in sorted(recs, key=lambda r: r.endedAt or 0, reverse=True):
        if r.crash is not None:
            events.append(Problem(event="session_crashed", level="error", component="session",
                                  operation=r.endReason, sessionId=r.id, errorCode=r.endReason, timestamp=r.endedAt,
                                  attributes=CrashAttributes(reason=r.crash.reason[:200], exitCode=r.crash.exitCode,
                                                             signal=r.crash.signal, agent=r.agent)))
        if len(events) >= p.limit:
            break
    return Diagnostics(count=len(events), events=events)


@op("tools", Empty, result=Tools, summary="Every operation this daemon offers")
async def list_tools(ctx: OpContext, p: Empty) -> Tools:
    ordered = sorted(REGISTRY.values(), key=lambda o: o.name)
    items = [Tool(name=o.name, description=o.summary, category=o.name.split(".")[0], permission=o.permission,
                  streaming=o.stream) for o in ordered]
    return Tools(tools=items, categories=sorted({i.category for i in items}), totalTools=len(items))


SERVER_CAPABILITIES = ["session.create", "session.resume", "session.approve", "session.transcript",
                       "session.events.sse", "session.events.replay", "session.metrics", "rpc", "metrics",
                       "audit", "keys"]


@op("handshake", HandshakeParams, result=Handshake, summary="Capability negotiation", permission="public")
async def handshake(ctx: OpContext, p: HandshakeParams) -> Handshake:
    try:
        major = int(p.protocolVersion.split(".")[0])
    except ValueError:
        raise ValidationError("protocolVersion must look like '1' or '1.2'") from None
    if major < 1:
        raise Conflict(f"client protocol {p.protocolVersion} is older than the minimum (1)")
    wanted = p.clientCapabilities or []
    return Handshake(protocolVersion="1", serverVersion=__version__, serverCapabilities=SERVER_CAPABILITIES,
                     negotiatedCapabilities=[c for c in wanted if c in SERVER_CAPABILITIES],
                     warnings=[f"unsupported capability: {c}" for c in wanted if c not in SERVER_CAPABILITIES],
                     compatible=True)


@op("v2", Empty, result=V2, permission="public", summary="API v2 is not planned yet: where to go instead")
async def v2(ctx: OpContext, p: Empty) -> V2:
    return V2(version=2, status="planned", message="API v2 does not exist yet; use /v1", migration_guide=None,
              v1_base="/v1")
