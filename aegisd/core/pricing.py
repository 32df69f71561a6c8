"""What a turn costs: the metering record of one turn, and the list prices an estimate uses when the agent does
not report a cost itself."""

from __future__ import annotations

import msgspec

# USD per million tokens (input, output); cache reads at 10 %, cache writes at 125 % of the input rate.
# List prices of the model families as published by Anthropic; a model matching no family is priced as sonnet.
RATE_TIERS: dict[str, tuple[float, float]] = {"haiku": (0.80, 4.0), "sonnet": (3.0, 15.0), "opus": (15.0, 75.0)}
DEFAULT_TIER = "sonnet"


def tier_of(model: str | None) -> str:
    m = (model or "").lower()
    return next((k for k in RATE_TIERS if k in m), DEFAULT_TIER)


def estimate_cost(model: str | None, tin: int, tout: int, cache_read: int = 0, cache_write: int = 0) -> float:
    rin, rout = RATE_TIERS[tier_of(model)]
    return round((tin * rin + tout * rout + cache_read * rin * 0.1 + cache_write * rin * 1.25) / 1e6, 6)


class UsageRecord(msgspec.Struct, omit_defaults=True):
    ts: int  # ms
    sessionId: str
    keyId: str | None = None
    agent: str = ""
    model: str | None = None
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadTokens: int = 0
    cacheCreationTokens: int = 0
    totalTokens: int = 0
    costUsd: float = 0.0
