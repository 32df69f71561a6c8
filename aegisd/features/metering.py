"""Metering: one record per finished turn that reported token usage (ACP `session/prompt` result `usage`),
kept 90 days in the store's `usage` log (aegisd/store; an earlier version's `<state>/usage.jsonl` moves in at the
first start). Feeds
`/v1/usage*`, `/v1/analytics/*` and `/v1/metrics/aggregate`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from aegisd.core.pricing import DEFAULT_TIER, RATE_TIERS, UsageRecord, estimate_cost, tier_of
from aegisd.store import LogWriter, RecordLog, migrate_legacy

log = structlog.get_logger("aegisd.usage")

__all__ = ["DEFAULT_TIER", "RATE_TIERS", "RETENTION_DAYS", "UsageLedger", "UsageRecord", "estimate_cost", "tier_of"]

RETENTION_DAYS = 90


def _read_legacy(path: Path) -> list[UsageRecord]:
    dec = msgspec.json.Decoder(UsageRecord)
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(dec.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # a line torn by a crash
    return out

class UsageLedger:
    """The records of the last RETENTION_DAYS, in memory, kept in the store's `usage` log. ``record`` is called by
    the session runner as a turn ends; a writer task (``run``) stores the records in order (metering never holds
    up a turn), and ``close`` stores what is left."""

    def __init__(self, log: RecordLog, *, legacy_file: Path | None = None) -> None:
        self.log = log
        self.legacy_file = legacy_file  # an earlier version's <state>/usage.jsonl, moved into the store at start
        self.records: list[UsageRecord] = []
        self.writer = LogWriter(log, encode=msgspec.to_builtins)  # records not stored yet, in order

    async def open(self) -> None:
        """Load the records of the retention window; older ones are trimmed from the store."""
        cutoff = int(time.time() * 1000) - RETENTION_DAYS * 86_400_000
        if self.legacy_file is not None:
            await migrate_legacy(self.legacy_file, _read_legacy,
                                 lambda recs: self.log.append_missing([msgspec.to_builtins(r) for r in recs
                                                                       if r.ts >= cutoff]))
        kept: list[UsageRecord] = []
        stored = await self.log.read()
        first_kept: int | None = None
        for seq, doc in stored:
            try:
                rec = msgspec.convert(doc, UsageRecord)
            except msgspec.ValidationError:
                continue
            if rec.ts >= cutoff:
                kept.append(rec)
                first_kept = seq if first_kept is None else first_kept
        if stored:
            before = first_kept if first_kept is not None else stored[-1][0] + 1
            if before > stored[0][0]:  # older records past the retention: out of the store
                await self.log.trim(before)
                log.info("usage.compacted", kept=len(kept), dropped=len(stored) - len(kept))
        self.records = kept

    async def close(self) -> None:
        await self.stored()

    def record(self, rec: UsageRecord) -> None:
        self.records.append(rec)
        self.writer.put(rec)

    async def stored(self) -> None:
        """Return once every record so far is in the store (a store error is logged; they stay queued)."""
        await self.writer.stored()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.writer.run(task_status=task_status)

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
