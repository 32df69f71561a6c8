"""Metering: one record per finished turn that reported token usage (ACP `session/prompt` result `usage`),
kept 90 days in the store's `usage` log (aegisd/store; an earlier version's `<state>/usage.jsonl` moves in at the
first start). Feeds
`/v1/usage*`, `/v1/analytics/*` and `/v1/metrics/aggregate`, and the quotas (aegisd/features/quotas.py). In a
cluster, ``catch_up`` folds in what other nodes appended when the store says the log grew."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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


class _NotedLog(RecordLog):
    """The usage log as the writer sees it: tells the ledger the seq of every record this daemon appends, so that
    ``UsageLedger.catch_up`` skips them (they are in memory already)."""

    def __init__(self, log: RecordLog, noted: Callable[[int], None]) -> None:
        super().__init__(log.store, log.name)
        self._log, self._noted = log, noted

    async def append(self, record: Any) -> int:
        seq = await self._log.append(record)
        self._noted(seq)
        return seq


class UsageLedger:
    """The records of the last RETENTION_DAYS, in memory, kept in the store's `usage` log. ``record`` is called by
    the session runner as a turn ends; a writer task (``run``) stores the records in order (metering never holds
    up a turn), and ``close`` stores what is left."""

    def __init__(self, log: RecordLog, *, legacy_file: Path | None = None) -> None:
        self.log = log
        self.legacy_file = legacy_file  # an earlier version's <state>/usage.jsonl, moved into the store at start
        self.records: list[UsageRecord] = []
        self.folded = 0  # the highest seq of the log that ``records`` includes (from open() and catch_up())
        self._own: set[int] = set()  # seqs this daemon appended above ``folded`` (after another node's): in memory
        self.writer = LogWriter(_NotedLog(log, self._appended), encode=msgspec.to_builtins)  # not stored yet

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
        self.folded = stored[-1][0] if stored else 0

    def _appended(self, seq: int) -> None:
        """This daemon stored a record as ``seq``. Right after what is folded in (no other node appended in
        between, always so on a single node), it simply moves ``folded`` on; otherwise catch_up skips it."""
        self._own.add(seq)
        self._advance()

    def _advance(self) -> None:
        self._own.difference_update([s for s in self._own if s <= self.folded])
        while self.folded + 1 in self._own:
            self.folded += 1
            self._own.discard(self.folded)

    async def catch_up(self) -> int:
        """Fold in the records other nodes appended to the log since the last time (a cluster on one store: a
        key's usage through any node counts toward its quotas on every node); those this daemon appended are in
        memory already and are skipped, so repeated calls never count a record twice. Returns how many were
        added; raises the store's error (StoreUnavailable) for the caller to retry."""
        cutoff = int(time.time() * 1000) - RETENTION_DAYS * 86_400_000
        async with self.writer.lock:  # no append of this daemon in flight: every stored seq of ours is noted
            stored = await self.log.read(self.folded)
            added = 0
            for seq, doc in stored:
                if seq in self._own:
                    continue
                try:
                    rec = msgspec.convert(doc, UsageRecord)
                except msgspec.ValidationError:
                    continue
                if rec.ts >= cutoff:
                    self.records.append(rec)
                    added += 1
            if stored:
                self.folded = max(self.folded, stored[-1][0])
            self._advance()
        return added

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
