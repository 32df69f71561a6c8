"""Metering and analytics from the usage ledger (aegisd/features/metering.py): /v1/usage*, /v1/analytics/*,
/v1/metrics/aggregate; and the notification side: channel health and webhook delivery logs."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from aegisd.core.errors import NotFound, ValidationError
from aegisd.core.states import LIVE
from aegisd.features.metering import DEFAULT_TIER, RATE_TIERS, UsageRecord, tier_of, totals
from aegisd.ops._registry import OpContext, op

SCHEMA_VERSION = 1
DAY_MS = 86_400_000


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class RangeParams(msgspec.Struct, forbid_unknown_fields=True):
    # ISO 8601 dates or times (2026-11-01, 2026-11-01T12:00:00Z) or epoch milliseconds
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    keyId: str | None = None


class AggregateParams(RangeParams, forbid_unknown_fields=True):
    groupBy: str = "day"  # day | hour | key | model


class SessionUsageParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


def _instant(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name} must be an ISO 8601 date or time, or epoch milliseconds: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _range(p: RangeParams | SessionUsageParams, default_days: int | None = None) -> tuple[int | None, int | None]:
    since, until = _instant(p.from_, "from"), _instant(p.to, "to")
    if since is None and default_days is not None:
        since = (until or int(time.time() * 1000)) - default_days * DAY_MS
    if since is not None and until is not None and since > until:
        raise ValidationError("from must not be after to")
    return since, until


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _visible(ctx: OpContext, records: list[UsageRecord]) -> list[UsageRecord]:
    """Admins and operators see every key's usage; others their own."""
    p = ctx.principal
    if p.role in ("admin", "operator") or p.kind in ("master", "local"):
        return records
    return [r for r in records if r.keyId is not None and r.keyId == p.key_id]


def _tiers() -> list[dict[str, Any]]:
    return [{"tier": k, "inputPerMTokUsd": v[0], "outputPerMTokUsd": v[1], "cacheReadPerMTokUsd": round(v[0] * 0.1, 4),
             "cacheWritePerMTokUsd": round(v[0] * 1.25, 4), "default": k == DEFAULT_TIER}
            for k, v in RATE_TIERS.items()]


@op("usage.summary", RangeParams, permission="operator",
    summary="Metered token usage and estimated cost over a period (default: everything kept, 90 days)")
async def usage_summary(ctx: OpContext, p: RangeParams) -> dict[str, Any]:
    since, until = _range(p)
    recs = _visible(ctx, ctx.services.usage.select(since=since, until=until, key_id=p.keyId))
    return {"schema_version": SCHEMA_VERSION, "from": _iso(since), "to": _iso(until), "keyId": p.keyId,
            **totals(recs), "rate_tiers": _tiers()}


@op("usage.by_key", RangeParams, permission="admin", summary="Metered usage per API key")
async def usage_by_key(ctx: OpContext, p: RangeParams) -> dict[str, Any]:
    since, until = _range(p)
    groups: dict[str | None, list[UsageRecord]] = defaultdict(list)
    for r in ctx.services.usage.select(since=since, until=until, key_id=p.keyId):
        groups[r.keyId].append(r)
    keys = [{"keyId": k, "keyName": _key_name(ctx, k), **totals(v)} for k, v in groups.items()]
    keys.sort(key=lambda x: x["estimatedCostUsd"], reverse=True)
    return {"schema_version": SCHEMA_VERSION, "from": _iso(since), "to": _iso(until), "keys": keys,
            "total_keys": len(keys)}


def _key_name(ctx: OpContext, key_id: str | None) -> str | None:
    if key_id is None:
        return None
    try:
        return ctx.services.keys.get(key_id).name
    except Exception:  # noqa: BLE001 - a revoked key keeps its usage but has no name any more
        return None


@op("usage.session", SessionUsageParams, summary="Metered usage records (one per turn) of one session")
async def usage_session(ctx: OpContext, p: SessionUsageParams) -> dict[str, Any]:
    rec = ctx.session(p.id)
    since, until = _range(p)
    recs = ctx.services.usage.select(since=since, until=until, session_id=rec.id)
    return {"schema_version": SCHEMA_VERSION, "sessionId": rec.id, **totals(recs),
            "records": [msgspec.to_builtins(r) for r in recs], "total_records": len(recs)}


@op("usage.tiers", Empty, summary="The prices used to estimate cost (USD per million tokens, by model family)")
async def usage_tiers(ctx: OpContext, p: Empty) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "tiers": _tiers()}


_BUCKETS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00Z"}


@op("metrics.aggregate", AggregateParams, permission="operator",
    summary="Usage in buckets: groupBy day (default) | hour | key | model, over from..to (default: the last 7 days)")
async def aggregate(ctx: OpContext, p: AggregateParams) -> dict[str, Any]:
    if p.groupBy not in ("day", "hour", "key", "model"):
        raise ValidationError("groupBy must be day, hour, key or model")
    since, until = _range(p, default_days=7)
    recs = _visible(ctx, ctx.services.usage.select(since=since, until=until, key_id=p.keyId))
    groups: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in recs:
        if p.groupBy in _BUCKETS:
            k = datetime.fromtimestamp(r.ts / 1000, UTC).strftime(_BUCKETS[p.groupBy])
        elif p.groupBy == "key":
            k = r.keyId or "(none)"
        else:
            k = r.model or "(default)"
        groups[k].append(r)
    buckets = [{"bucket": k, **totals(v)} for k, v in sorted(groups.items())]
    return {"from": _iso(since), "to": _iso(until), "groupBy": p.groupBy, "buckets": buckets, "totals": totals(recs)}


def _daily(recs: list[UsageRecord]) -> list[dict[str, Any]]:
    days: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in recs:
        days[datetime.fromtimestamp(r.ts / 1000, UTC).strftime("%Y-%m-%d")].append(r)
    return [{"date": d, **totals(v)} for d, v in sorted(days.items())]


def _by(recs: list[UsageRecord], key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in recs:
        groups[key(r)].append(r)
    return {k: totals(v) for k, v in sorted(groups.items())}


@op("analytics.summary", Empty, summary="Dashboard summary: sessions by status, turns, tokens and cost")
async def analytics_summary(ctx: OpContext, p: Empty) -> dict[str, Any]:
    d = ctx.services
    sessions = ctx.visible(d.manager.records.values())
    by_status: dict[str, int] = defaultdict(int)
    for r in sessions:
        by_status[r.status.value] += 1
    recs = _visible(ctx, d.usage.records)
    return {"sessions": {"total": len(sessions), "active": sum(1 for r in sessions if r.status in LIVE),
                         "byStatus": dict(by_status)},
            "usage": totals(recs), "generatedAt": _iso(int(time.time() * 1000))}


@op("analytics.costs", Empty, summary="Estimated cost: total, by model, by key, and per day")
async def analytics_costs(ctx: OpContext, p: Empty) -> dict[str, Any]:
    recs = _visible(ctx, ctx.services.usage.records)
    t = totals(recs)
    return {"totalCostUsd": t["estimatedCostUsd"], "totalSessions": t["sessions"],
            "byModel": {k: v["estimatedCostUsd"] for k, v in _by(recs, lambda r: tier_of(r.model)).items()},
            "byKey": {k: v["estimatedCostUsd"] for k, v in _by(recs, lambda r: r.keyId or "(none)").items()},
            "dailyTrends": [{"date": x["date"], "costUsd": x["estimatedCostUsd"], "sessions": x["sessions"]}
                            for x in _daily(recs)],
            "generatedAt": _iso(int(time.time() * 1000))}


@op("analytics.tokens", Empty, summary="Token usage: totals, by model, by key, and per day")
async def analytics_tokens(ctx: OpContext, p: Empty) -> dict[str, Any]:
    recs = _visible(ctx, ctx.services.usage.records)
    return {"totals": totals(recs), "byModel": _by(recs, lambda r: tier_of(r.model)),
            "byKey": _by(recs, lambda r: r.keyId or "(none)"), "dailyTrends": _daily(recs),
            "generatedAt": _iso(int(time.time() * 1000))}


@op("analytics.rate_limits", Empty,
    summary="Request rate limits and per-key quota usage, with how many more sessions fit (admins see every "
            "key, others their own)")
async def analytics_rate_limits(ctx: OpContext, p: Empty) -> dict[str, Any]:
    from aegisd.features.quotas import parse

    d = ctx.services
    limiter = d.rate_limiter
    admin = ctx.principal.role == "admin" or ctx.principal.kind in ("local", "master")
    keys = [k for k in d.keys.list() if admin or k.id == ctx.principal.key_id]
    per_key: list[dict[str, Any]] = []
    headroom: list[tuple[int, str]] = []
    for k in keys:
        q = parse(k.quotas)
        use = d.quotas.usage_of(k.id, q)
        per_key.append({
            "keyId": k.id, "keyName": k.name, "requestsPerMinute": k.rateLimit,
            "requestsInLastMinute": limiter.count(f"p:key:{k.id}") if limiter else 0,
            "activeSessions": use["activeSessions"],
            "maxSessions": q.maxConcurrentSessions if q else None,
            "tokensInWindow": use["tokensInWindow"], "maxTokens": q.maxTokensPerWindow if q else None,
            "spendInWindowUsd": use["spendInWindowUsd"], "maxSpendUsd": q.maxSpendPerWindow if q else None,
            "windowMs": use["windowMs"]})
        if q is None:
            continue
        # sessions used in the window give the average cost of one; what is left divided by it is the forecast
        recs = d.usage.select(since=use["windowStart"], key_id=k.id)
        n = len({r.sessionId for r in recs}) or 1
        if q.maxConcurrentSessions is not None:
            headroom.append((max(0, q.maxConcurrentSessions - use["activeSessions"]), "concurrent_sessions"))
        if q.maxTokensPerWindow is not None and use["tokensInWindow"]:
            left = max(0, q.maxTokensPerWindow - use["tokensInWindow"])
            headroom.append((int(left // (use["tokensInWindow"] / n)), "tokens_per_window"))
        if q.maxSpendPerWindow is not None and use["spendInWindowUsd"]:
            left_usd = max(0.0, q.maxSpendPerWindow - use["spendInWindowUsd"])
            headroom.append((int(left_usd // (use["spendInWindowUsd"] / n)), "spend_per_window"))
    best = min(headroom) if headroom else None
    return {"global": {"max": d.config.ipRateLimit or None, "timeWindowMs": 60_000, "scope": "per client IP"},
            "perKey": per_key,
            "forecast": {"estimatedSessionsRemaining": best[0] if best else None,
                         "bottleneck": best[1] if best else None},
            "quotaRejections": d.quotas.rejections,
            "generatedAt": _iso(int(time.time() * 1000))}


# ---- alerting ----------------------------------------------------------------------------------------
@op("alerts.stats", Empty, summary="Alerting: failures counted per kind, alerts fired, webhook deliveries")
async def alerts_stats(ctx: OpContext, p: Empty) -> dict[str, Any]:
    d = ctx.services
    if ctx.principal.role == "admin":
        return d.alerts.stats()
    return d.alerts.stats(lambda sid: sid is not None and ctx.can_see(sid))


@op("alerts.test", Empty, permission="operator",
    summary="Send a test alert to every alert webhook now (no retries); 502 if one fails")
async def alerts_test(ctx: OpContext, p: Empty) -> dict[str, Any]:
    from aegisd.core.errors import DeliveryFailed

    alerts = ctx.services.alerts
    if not alerts.endpoints:
        return {"sent": False, "webhookCount": 0,
                "message": "no alert webhooks configured (set AEGIS_ALERT_WEBHOOKS or alerting.webhooks)"}
    errors = (await alerts.test())["errors"]
    ctx.audit("alerts.test", detail={"webhooks": len(alerts.endpoints), "failed": len(errors)})
    if errors:
        raise DeliveryFailed(f"alert delivery failed: {'; '.join(errors)}",
                             details={"webhookCount": len(alerts.endpoints), "errors": errors})
    return {"sent": True, "webhookCount": len(alerts.endpoints)}


# ---- notification channels -------------------------------------------------------------------------
@op("channels.health", Empty, summary="Health of each notification channel (one entry per webhook endpoint)")
async def channels_health(ctx: OpContext, p: Empty) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = ctx.services.webhooks.health()
    if ctx.principal.role != "admin":  # chat services keep the secret in the URL's path: admins only see it
        from aegisd.notify.webhooks import log_url

        out = [{**h, "endpoint": log_url(h["endpoint"])} for h in out]
    out += [health() for health in ctx.services.channels]
    return out


class HookIndexParams(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^\d{1,4}$")]


@op("webhooks.deliveries", HookIndexParams, permission="admin",
    summary="The last delivery attempts to one webhook endpoint (by its index in the configuration, from 0)")
async def deliveries(ctx: OpContext, p: HookIndexParams) -> list[dict[str, Any]]:
    wh = ctx.services.webhooks
    i = int(p.id)
    if i >= len(wh.endpoints):
        raise NotFound(f"no webhook endpoint {i} (there are {len(wh.endpoints)})")
    return list(reversed(wh.deliveries[i]))


@op("v2", Empty, permission="public", summary="API v2 is not planned yet: where to go instead")
async def v2(ctx: OpContext, p: Empty) -> dict[str, Any]:
    return {"version": 2, "status": "planned", "message": "API v2 does not exist yet; use /v1",
            "migration_guide": None, "v1_base": "/v1"}

