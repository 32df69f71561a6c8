"""Metering and analytics from the usage ledger (aegisd/features/metering.py): /v1/usage*, /v1/analytics/*,
/v1/metrics/aggregate. Totals (``totals()``) are spread into the rows that carry them."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import msgspec

from aegisd.core.errors import ValidationError
from aegisd.core.states import LIVE
from aegisd.features.metering import DEFAULT_TIER, RATE_TIERS, UsageRecord, tier_of, totals
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Empty

SCHEMA_VERSION = 1
DAY_MS = 86_400_000


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


# ---- results -----------------------------------------------------------------------------------------
class Totals(msgspec.Struct):
    turns: int
    sessions: int
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheCreationTokens: int
    totalTokens: int
    estimatedCostUsd: float


class Tier(msgspec.Struct):
    tier: str
    inputPerMTokUsd: float
    outputPerMTokUsd: float
    cacheReadPerMTokUsd: float
    cacheWritePerMTokUsd: float
    default: bool


class UsageSummary(msgspec.Struct):
    schema_version: int
    from_: str | None = msgspec.field(name="from")
    to: str | None
    keyId: str | None
    turns: int
    sessions: int
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheCreationTokens: int
    totalTokens: int
    estimatedCostUsd: float
    rate_tiers: list[Tier]


class KeyUsage(msgspec.Struct):
    keyId: str | None
    keyName: str | None
    turns: int
    sessions: int
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheCreationTokens: int
    totalTokens: int
    estimatedCostUsd: float


class UsageByKey(msgspec.Struct):
    schema_version: int
    from_: str | None = msgspec.field(name="from")
    to: str | None
    keys: list[KeyUsage]
    total_keys: int


class SessionUsage(msgspec.Struct):
    schema_version: int
    sessionId: str
    turns: int
    sessions: int
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheCreationTokens: int
    totalTokens: int
    estimatedCostUsd: float
    records: list[UsageRecord]
    total_records: int


class Tiers(msgspec.Struct):
    schema_version: int
    tiers: list[Tier]


class Bucket(msgspec.Struct):
    bucket: str
    turns: int
    sessions: int
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheCreationTokens: int
    totalTokens: int
    estimatedCostUsd: float


class Aggregate(msgspec.Struct):
    from_: str | None = msgspec.field(name="from")
    to: str | None
    groupBy: str
    buckets: list[Bucket]
    totals: Totals


class Day(msgspec.Struct):
    date: str
    turns: int
    sessions: int
    inputTokens: int
    outputTokens: int
    cacheReadTokens: int
    cacheCreationTokens: int
    totalTokens: int
    estimatedCostUsd: float


class AnalyticsSessions(msgspec.Struct):
    total: int
    active: int
    byStatus: dict[str, int]


class AnalyticsSummary(msgspec.Struct):
    sessions: AnalyticsSessions
    usage: Totals
    generatedAt: str | None


class DayCost(msgspec.Struct):
    date: str
    costUsd: float
    sessions: int


class Costs(msgspec.Struct):
    totalCostUsd: float
    totalSessions: int
    byModel: dict[str, float]
    byKey: dict[str, float]
    dailyTrends: list[DayCost]
    generatedAt: str | None


class Tokens(msgspec.Struct):
    totals: Totals
    byModel: dict[str, Totals]
    byKey: dict[str, Totals]
    dailyTrends: list[Day]
    generatedAt: str | None


class GlobalLimit(msgspec.Struct):
    max: int | None
    timeWindowMs: int
    scope: str


class KeyLimits(msgspec.Struct):
    keyId: str
    keyName: str
    requestsPerMinute: int
    requestsInLastMinute: int
    activeSessions: int
    maxSessions: int | None
    tokensInWindow: int
    maxTokens: int | None
    spendInWindowUsd: float
    maxSpendUsd: float | None
    windowMs: int


class Forecast(msgspec.Struct):
    estimatedSessionsRemaining: int | None
    bottleneck: str | None  # concurrent_sessions | tokens_per_window | spend_per_window


class RateLimits(msgspec.Struct):
    global_: GlobalLimit = msgspec.field(name="global")
    perKey: list[KeyLimits]
    forecast: Forecast
    quotaRejections: int
    generatedAt: str | None


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


def _tiers() -> list[Tier]:
    return [Tier(tier=k, inputPerMTokUsd=v[0], outputPerMTokUsd=v[1], cacheReadPerMTokUsd=round(v[0] * 0.1, 4),
                 cacheWritePerMTokUsd=round(v[0] * 1.25, 4), default=k == DEFAULT_TIER)
            for k, v in RATE_TIERS.items()]


@op("usage.summary", RangeParams, result=UsageSummary, permission="operator",
    summary="Metered token usage and estimated cost over a period (default: everything kept, 90 days)")
async def usage_summary(ctx: OpContext, p: RangeParams) -> UsageSummary:
    since, until = _range(p)
    recs = _visible(ctx, ctx.services.usage.select(since=since, until=until, key_id=p.keyId))
    return UsageSummary(schema_version=SCHEMA_VERSION, from_=_iso(since), to=_iso(until), keyId=p.keyId,
                        **totals(recs), rate_tiers=_tiers())


@op("usage.by_key", RangeParams, result=UsageByKey, permission="admin", summary="Metered usage per API key")
async def usage_by_key(ctx: OpContext, p: RangeParams) -> UsageByKey:
    since, until = _range(p)
    groups: dict[str | None, list[UsageRecord]] = defaultdict(list)
    for r in ctx.services.usage.select(since=since, until=until, key_id=p.keyId):
        groups[r.keyId].append(r)
    keys = [KeyUsage(keyId=k, keyName=_key_name(ctx, k), **totals(v)) for k, v in groups.items()]
    keys.sort(key=lambda x: x.estimatedCostUsd, reverse=True)
    return UsageByKey(schema_version=SCHEMA_VERSION, from_=_iso(since), to=_iso(until), keys=keys,
                      total_keys=len(keys))


def _key_name(ctx: OpContext, key_id: str | None) -> str | None:
    if key_id is None:
        return None
    try:
        return ctx.services.keys.get(key_id).name
    except Exception:  # noqa: BLE001 - a revoked key keeps its usage but has no name any more
        return None


@op("usage.session", SessionUsageParams, result=SessionUsage,
    summary="Metered usage records (one per turn) of one session")
async def usage_session(ctx: OpContext, p: SessionUsageParams) -> SessionUsage:
    rec = ctx.session(p.id)
    since, until = _range(p)
    recs = ctx.services.usage.select(since=since, until=until, session_id=rec.id)
    return SessionUsage(schema_version=SCHEMA_VERSION, sessionId=rec.id, **totals(recs), records=list(recs),
                        total_records=len(recs))


@op("usage.tiers", Empty, result=Tiers,
    summary="The prices used to estimate cost (USD per million tokens, by model family)")
async def usage_tiers(ctx: OpContext, p: Empty) -> Tiers:
    return Tiers(schema_version=SCHEMA_VERSION, tiers=_tiers())


_BUCKETS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00Z"}


@op("metrics.aggregate", AggregateParams, result=Aggregate, permission="operator",
    summary="Usage in buckets: groupBy day (default) | hour | key | model, over from..to (default: the last 7 days)")
async def aggregate(ctx: OpContext, p: AggregateParams) -> Aggregate:
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
    buckets = [Bucket(bucket=k, **totals(v)) for k, v in sorted(groups.items())]
    return Aggregate(from_=_iso(since), to=_iso(until), groupBy=p.groupBy, buckets=buckets,
                     totals=Totals(**totals(recs)))


def _daily(recs: list[UsageRecord]) -> list[Day]:
    days: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in recs:
        days[datetime.fromtimestamp(r.ts / 1000, UTC).strftime("%Y-%m-%d")].append(r)
    return [Day(date=d, **totals(v)) for d, v in sorted(days.items())]


def _by(recs: list[UsageRecord], key: Any) -> dict[str, Totals]:
    groups: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in recs:
        groups[key(r)].append(r)
    return {k: Totals(**totals(v)) for k, v in sorted(groups.items())}


@op("analytics.summary", Empty, result=AnalyticsSummary,
    summary="Dashboard summary: sessions by status, turns, tokens and cost")
async def analytics_summary(ctx: OpContext, p: Empty) -> AnalyticsSummary:
    d = ctx.services
    sessions = ctx.visible(d.manager.records.values())
    by_status: dict[str, int] = defaultdict(int)
    for r in sessions:
        by_status[r.status.value] += 1
    recs = _visible(ctx, d.usage.records)
    return AnalyticsSummary(sessions=AnalyticsSessions(total=len(sessions),
                                                   active=sum(1 for r in sessions if r.status in LIVE),
                                                   byStatus=dict(by_status)),
                            usage=Totals(**totals(recs)), generatedAt=_iso(int(time.time() * 1000)))


@op("analytics.costs", Empty, result=Costs, summary="Estimated cost: total, by model, by key, and per day")
async def analytics_costs(ctx: OpContext, p: Empty) -> Costs:
    recs = _visible(ctx, ctx.services.usage.records)
    t = totals(recs)
    return Costs(totalCostUsd=t["estimatedCostUsd"], totalSessions=t["sessions"],
                 byModel={k: v.estimatedCostUsd for k, v in _by(recs, lambda r: tier_of(r.model)).items()},
                 byKey={k: v.estimatedCostUsd for k, v in _by(recs, lambda r: r.keyId or "(none)").items()},
                 dailyTrends=[DayCost(date=x.date, costUsd=x.estimatedCostUsd, sessions=x.sessions)
                              for x in _daily(recs)],
                 generatedAt=_iso(int(time.time() * 1000)))


@op("analytics.tokens", Empty, result=Tokens, summary="Token usage: totals, by model, by key, and per day")
async def analytics_tokens(ctx: OpContext, p: Empty) -> Tokens:
    recs = _visible(ctx, ctx.services.usage.records)
    return Tokens(totals=Totals(**totals(recs)), byModel=_by(recs, lambda r: tier_of(r.model)),
                  byKey=_by(recs, lambda r: r.keyId or "(none)"), dailyTrends=_daily(recs),
                  generatedAt=_iso(int(time.time() * 1000)))


@op("analytics.rate_limits", Empty, result=RateLimits,
    summary="Request rate limits and per-key quota usage, with how many more sessions fit (admins see every "
            "key, others their own)")
async def analytics_rate_limits(ctx: OpContext, p: Empty) -> RateLimits:
    from aegisd.features.quotas import parse

    d = ctx.services
    limiter = d.rate_limiter
    admin = ctx.principal.role == "admin" or ctx.principal.kind in ("local", "master")
    keys = [k for k in d.keys.list() if admin or k.id == ctx.principal.key_id]
    per_key: list[KeyLimits] = []
    headroom: list[tuple[int, str]] = []
    for k in keys:
        q = parse(k.quotas)
        use = d.quotas.usage_of(k.id, q)
        per_key.append(KeyLimits(
            keyId=k.id, keyName=k.name, requestsPerMinute=k.rateLimit,
            requestsInLastMinute=limiter.count(f"p:key:{k.id}") if limiter else 0,
            activeSessions=use["activeSessions"], maxSessions=q.maxConcurrentSessions if q else None,
            tokensInWindow=use["tokensInWindow"], maxTokens=q.maxTokensPerWindow if q else None,
            spendInWindowUsd=use["spendInWindowUsd"], maxSpendUsd=q.maxSpendPerWindow if q else None,
            windowMs=use["windowMs"]))
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
    return RateLimits(global_=GlobalLimit(max=d.config.ipRateLimit or None, timeWindowMs=60_000,
                                          scope="per client IP"),
                      perKey=per_key,
                      forecast=Forecast(estimatedSessionsRemaining=best[0] if best else None,
                                        bottleneck=best[1] if best else None),
                      quotaRejections=d.quotas.rejections, generatedAt=_iso(int(time.time() * 1000)))


