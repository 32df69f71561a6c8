"""Metering: one record per finished turn that reported token usage (ACP `session/prompt` result `usage`),
kept in `<state>/usage.jsonl` whatever the session store (as the original kept its metering files). Feeds
`/v1/usage*`, `/v1/analytics/*` and `/v1/metrics/aggregate`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from aegisd.core.pricing import DEFAULT_TIER, RATE_TIERS, UsageRecord, estimate_cost, tier_of

log = structlog.get_logger("aegisd.usage")

__all__ = ["DEFAULT_TIER", "RATE_TIERS", "RETENTION_DAYS", "UsageLedger", "UsageRecord", "estimate_cost", "tier_of"]

RETENTION_DAYS = 90

class UsageLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[UsageRecord] = []
        self._fd: int | None = None

    def open(self) -> None:
        cutoff = int(time.time() * 1000) - RETENTION_DAYS * 86_400_000
        kept: list[UsageRecord] = []
        dropped = 0
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        dec = msgspec.json.Decoder(UsageRecord)
        for line in lines:
            try:
                rec = dec.decode(line)
            except msgspec.DecodeError:
                dropped += 1  # a line torn by a crash
                continue
            if rec.ts >= cutoff:
                kept.append(rec)
            else:
                dropped += 1
        if dropped:
            from aegisd.store._fs import atomic_write

            atomic_write(self.path, b"".join(msgspec.json.encode(r) + b"\n" for r in kept))
            log.info("usage.compacted", kept=len(kept), dropped=dropped)
        self.records = kept
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, rec: UsageRecord) -> None:
        self.records.append(rec)
        if self._fd is not None:
            try:
                os.write(self._fd, msgspec.json.encode(rec) + b"\n")  # one write(2): a line is never torn in two
            except OSError as exc:  # metering must not end a turn; it is logged instead
                log.error("usage.write_failed", error=str(exc))

    def select(self, *, since: int | None = None, until: int | None = None, key_id: str | None = None,
               session_id: str | None = None) -> list[UsageRecord]:
        return [r for r in self.records
                if (since is None or r.ts >= since) and (until is None or r.ts <= until)
                and (key_id is None or r.keyId == key_id) and (session_id is None or r.sessionId == session_id)]


def totals(records: Iterable[UsageRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {"turns": 0, "sessions": 0, "inputTokens": 0, "outputTokens": 0, "cacheReadTokens": 0,
                           "cacheCreationTokens": 0, "totalTokens": 0, "estimatedCostUsd": 0.0}
    sessions: set[str] = set()
    for r in records:
        out["turns"] += 1
        sessions.add(r.sessionId)
        out["inputTokens"] += r.inputTokens
        out["outputTokens"] += r.outputTokens
        out["cacheReadTokens"] += r.cacheReadTokens
        out["cacheCreationTokens"] += r.cacheCreationTokens
        out["totalTokens"] += r.totalTokens
        out["estimatedCostUsd"] += r.costUsd
    out["sessions"] = len(sessions)
    out["estimatedCostUsd"] = round(out["estimatedCostUsd"], 6)
    return out
