"""Per-API-key quotas: concurrent sessions (checked when a session is created) and tokens or estimated spend
within a rolling window (checked before each prompt is delivered), from the metering ledger.

A key without quotas is limited only by its request rate. The master token and the control socket have none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from aegisd.core.errors import QuotaExceeded, ValidationError
from aegisd.core.models import now_ms
from aegisd.features.metering import UsageLedger

HOUR_MS = 3_600_000


class Quotas(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    maxConcurrentSessions: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    maxTokensPerWindow: Annotated[int, msgspec.Meta(ge=1)] | None = None
    maxSpendPerWindow: Annotated[float, msgspec.Meta(ge=0)] | None = None  # USD, as estimated from usage
    quotaWindowMs: Annotated[int, msgspec.Meta(ge=60_000, le=30 * 86_400_000)] = HOUR_MS

    @property
    def empty(self) -> bool:
        return self.maxConcurrentSessions is None and self.maxTokensPerWindow is None \
            and self.maxSpendPerWindow is None


def parse(raw: Any) -> Quotas | None:
    if raw is None:
        return None
    try:
        q = msgspec.convert(raw, Quotas)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid quotas: {exc}") from None
    return None if q.empty else q  # a window with nothing to count in it limits nothing


class QuotaGuard:
    """Answers "may this key start one more session / send one more prompt?" from live state alone."""

    def __init__(self, usage: UsageLedger, live_sessions: Callable[[str], int],
                 quotas_of: Callable[[str], Quotas | None]) -> None:
        self.usage = usage
        self.live_sessions = live_sessions  # key id -> live sessions it owns
        self.quotas_of = quotas_of  # key id -> its quotas (None: unlimited, or no such key any more)
        self.rejections = 0

    def usage_of(self, key_id: str, quotas: Quotas | None = None) -> dict[str, Any]:
        window = (quotas.quotaWindowMs if quotas else HOUR_MS)
        since = now_ms() - window
        recs = self.usage.select(since=since, key_id=key_id)
        return {"activeSessions": self.live_sessions(key_id),
                "tokensInWindow": sum(r.totalTokens for r in recs),
                "spendInWindowUsd": round(sum(r.costUsd for r in recs), 6),
                "windowMs": window, "windowStart": since,
                # when the oldest turn counted leaves the window (None: nothing counted)
                "windowFreesAt": min(r.ts for r in recs) + window if recs else None}

    def _refuse(self, message: str, quota: str, limit: Any, usage: dict[str, Any]) -> QuotaExceeded:
        self.rejections += 1
        details: dict[str, Any] = {"quota": quota, "limit": limit, "usage": usage}
        if quota != "maxConcurrentSessions" and usage["windowFreesAt"] is not None:
            details["retryAfter"] = max(1, -(-(usage["windowFreesAt"] - now_ms()) // 1000))
        return QuotaExceeded(message, details=details)

    def check_create(self, key_id: str | None) -> None:
        q = self.quotas_of(key_id) if key_id else None
        if q is None or q.maxConcurrentSessions is None:
            return
        live = self.live_sessions(key_id or "")
        if live >= q.maxConcurrentSessions:
            raise self._refuse(f"this API key may run {q.maxConcurrentSessions} sessions at once and has {live}; "
                               "end one first", "maxConcurrentSessions", q.maxConcurrentSessions,
                               self.usage_of(key_id or "", q))

    def check_send(self, key_id: str | None) -> None:
        q = self.quotas_of(key_id) if key_id else None
        if q is None or (q.maxTokensPerWindow is None and q.maxSpendPerWindow is None):
            return
        use = self.usage_of(key_id or "", q)
        minutes = q.quotaWindowMs // 60_000
        if q.maxTokensPerWindow is not None and use["tokensInWindow"] >= q.maxTokensPerWindow:
            raise self._refuse(f"this API key used {use['tokensInWindow']} of its {q.maxTokensPerWindow} tokens "
                               f"in the last {minutes} min", "maxTokensPerWindow", q.maxTokensPerWindow, use)
        if q.maxSpendPerWindow is not None and use["spendInWindowUsd"] >= q.maxSpendPerWindow:
            raise self._refuse(f"this API key spent ${use['spendInWindowUsd']:.4f} of its "
                               f"${q.maxSpendPerWindow:.4f} in the last {minutes} min",
                               "maxSpendPerWindow", q.maxSpendPerWindow, use)
