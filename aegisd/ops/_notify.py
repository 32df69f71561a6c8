"""The notification side: alerting (failure counters, test alerts), the health of each notification channel,
and webhook deliveries (the last attempts per endpoint, and the dead letters that failed every attempt)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from aegisd.core.errors import NotFound
from aegisd.notify.webhooks import DeadLetter
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Empty


class Tracker(msgspec.Struct):
    count: int  # failures of this kind in the window
    total: int
    fired: int
    lastAlertAt: int  # epoch ms, 0: never
    lastDetail: str | None


class AlertStats(msgspec.Struct):
    delivered: int
    failed: int
    webhookCount: int
    failureThreshold: int
    cooldownMs: int
    trackers: dict[str, Tracker]


class AlertTest(msgspec.Struct, kw_only=True):
    sent: bool
    webhookCount: int
    message: str | UnsetType = UNSET  # why nothing was sent


class ChannelHealth(msgspec.Struct):
    channel: str  # webhook | telegram | email
    endpoint: str
    healthy: bool
    lastSuccess: int | None
    lastError: str | None
    pendingCount: int


class Delivery(msgspec.Struct):
    id: int
    endpointUrl: str
    event: str
    status: str
    responseCode: int | None
    error: str
    timestamp: int
    attemptNumber: int


# ---- alerting ----------------------------------------------------------------------------------------
@op("alerts.stats", Empty, result=AlertStats,
    summary="Alerting: failures counted per kind, alerts fired, webhook deliveries")
async def alerts_stats(ctx: OpContext, p: Empty) -> AlertStats:
    d = ctx.services
    if ctx.principal.role == "admin":
        stats = d.alerts.stats()
    else:
        stats = d.alerts.stats(lambda sid: sid is not None and ctx.can_see(sid))
    trackers = {k: Tracker(**t) for k, t in stats.pop("trackers").items()}
    return AlertStats(**stats, trackers=trackers)


@op("alerts.test", Empty, result=AlertTest, permission="operator",
    summary="Send a test alert to every alert webhook now (no retries); 502 if one fails")
async def alerts_test(ctx: OpContext, p: Empty) -> AlertTest:
    from aegisd.core.errors import DeliveryFailed

    alerts = ctx.services.alerts
    if not alerts.endpoints:
        return AlertTest(sent=False, webhookCount=0,
                         message="no alert webhooks configured (set AEGIS_ALERT_WEBHOOKS or alerting.webhooks)")
    errors = (await alerts.test())["errors"]
    ctx.audit("alerts.test", detail={"webhooks": len(alerts.endpoints), "failed": len(errors)})
    if errors:
        raise DeliveryFailed(f"alert delivery failed: {'; '.join(errors)}",
                             details={"webhookCount": len(alerts.endpoints), "errors": errors})
    return AlertTest(sent=True, webhookCount=len(alerts.endpoints))


# ---- notification channels -------------------------------------------------------------------------
@op("channels.health", Empty, result=list[ChannelHealth],
    summary="Health of each notification channel (one entry per webhook endpoint)")
async def channels_health(ctx: OpContext, p: Empty) -> list[ChannelHealth]:
    out: list[dict[str, Any]] = ctx.services.webhooks.health()
    if ctx.principal.role != "admin":  # chat services keep the secret in the URL's path: admins only see it
        from aegisd.notify.webhooks import log_url

        out = [{**h, "endpoint": log_url(h["endpoint"])} for h in out]
    out += [health() for health in ctx.services.channels]
    return [ChannelHealth(**h) for h in out]


class HookIndexParams(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^\d{1,4}$")]


@op("webhooks.deliveries", HookIndexParams, result=list[Delivery], permission="admin",
    summary="The last delivery attempts to one webhook endpoint (by its index in the configuration, from 0)")
async def deliveries(ctx: OpContext, p: HookIndexParams) -> list[Delivery]:
    wh = ctx.services.webhooks
    i = int(p.id)
    if i >= len(wh.endpoints):
        raise NotFound(f"no webhook endpoint {i} (there are {len(wh.endpoints)})")
    return [Delivery(**x) for x in reversed(wh.deliveries[i])]


@op("webhooks.dead_letter", Empty, result=list[DeadLetter],
    summary="Webhook deliveries that failed every attempt (kept across restarts); non-admins see their own "
            "sessions' only, with endpoints by host")
async def dead_letter(ctx: OpContext, p: Empty) -> list[DeadLetter]:
    from aegisd.notify.webhooks import log_url

    d = ctx.services
    out = []
    for item in d.webhooks.dlq:
        session = item.payload.get("session")
        sid = session.get("id") if isinstance(session, dict) else None
        if not (isinstance(sid, str) and ctx.can_see(sid)):
            continue
        if ctx.principal.role != "admin":  # chat services keep the secret in the URL's path
            item = msgspec.structs.replace(item, endpoint=log_url(item.endpoint))
        out.append(item)
    return out
