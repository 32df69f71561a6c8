"""The audit log: append-only records in the store's `audit` log (aegisd/store), each hash-chained to the previous
one; acknowledged means stored (an operation answers once its records are in the store).

    hash = HMAC-SHA256(key, canonical JSON of the record without `hash`), prevHash of the first = 64 zeros

Editing, deleting or reordering records breaks the chain, which `verify()` reports with the first bad seq."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from aegisd.store import LogWriter, RecordLog, migrate_legacy

log = structlog.get_logger("aegisd.audit")

CHAIN_KEY = b"aegis-audit-chain-v1"
GENESIS = "0" * 64


def _canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash(record: dict[str, Any]) -> str:
    return hmac.new(CHAIN_KEY, _canonical(record), hashlib.sha256).hexdigest()


def verify_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The chain's verdict over ``records`` (oldest first): ok, or the first bad seq and why."""
    prev = GENESIS
    for i, r in enumerate(records, start=1):
        seq = r.get("seq", i)
        if "_corrupt" in r:
            return {"ok": False, "count": len(records), "badSeq": i, "reason": "unparseable line"}
        if seq != i:
            return {"ok": False, "count": len(records), "badSeq": i, "reason": f"expected seq {i}, got {seq}"}
        if r.get("prevHash") != prev:
            return {"ok": False, "count": len(records), "badSeq": seq, "reason": "broken link to the previous "
                    "record (a record was removed or reordered)"}
        if not hmac.compare_digest(str(r.get("hash", "")), _hash(r)):
            return {"ok": False, "count": len(records), "badSeq": seq, "reason": "record content was altered"}
        prev = r["hash"]
    return {"ok": True, "count": len(records), "lastHash": prev}


class _ChainWriter(LogWriter):
    """Stores each record only right after the one it links to: when another node of a cluster appended first
    (PostgreSQL refuses the conditional append), the records not stored yet are linked again after it and the
    append is tried again. So the cluster's nodes extend one chain, never fork it."""

    def __init__(self, log: RecordLog, audit: AuditLog) -> None:
        super().__init__(log)
        self.audit = audit

    async def _store_one(self, record: Any) -> None:
        while True:
            seq = await self.log.append_after(record, self.audit._read_to)
            if seq is not None:
                self.audit._read_to = seq
                return
            await self.audit._relink()  # re-links ``record`` too: it is the oldest pending


def read_legacy(directory: Path) -> list[dict[str, Any]]:
    """An earlier version's audit log, `<state>/audit/audit.jsonl` (one record per line)."""
    path = directory / "audit.jsonl"
    if path.is_symlink():
        raise OSError(f"refusing a symlinked audit log: {path}")
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines:
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"_corrupt": line.decode(errors="replace")})
    return out


class AuditLog:
    """The trail, kept in the store's `audit` log. ``record`` links a record into the chain at once (so the
    chain's order is the order of the calls) and queues it; ``stored()`` returns once every record made so far
    is in the store: operations await it before they answer (aegisd/ops/_registry.py), and a writer task
    (``run``) stores those made elsewhere (sign-in failures) as they come."""

    def __init__(self, log: RecordLog, *, legacy_dir: Path | None = None) -> None:
        self.log = log
        self.legacy_dir = legacy_dir  # an earlier version's <state>/audit/, moved into the store at start
        self._seq = 0
        self._last_hash = GENESIS
        self._read_to = 0  # the store's seq of the last record open() or catch_up() read
        self.writer = _ChainWriter(log, self)  # records made, in chain order, until stored

    async def open(self) -> None:
        if self.legacy_dir is not None:
            await migrate_legacy(self.legacy_dir, read_legacy, self.log.append_missing)
        async with self.writer.lock:
            stored = await self.log.read()
        if stored:
            rec = stored[-1][1]
            self._seq, self._last_hash = rec.get("seq", len(stored)), rec.get("hash", GENESIS)
            self._read_to = stored[-1][0]

    async def catch_up(self) -> None:
        """Other nodes of a cluster appended to the shared trail: link what comes next after the last stored
        record, whoever made it, and link again the records made here that are not stored yet. (Reads always come
        from the store; only the chain's head is kept here. Two nodes storing a record at the same moment still
        link both to the same predecessor, which ``verify`` reports.) Raises the store's error for the caller to
        retry."""
        async with self.writer.lock:  # nothing of ours is being stored meanwhile
            await self._relink()

    async def _relink(self) -> None:
        """(The writer's lock held.) Read what other nodes stored after ``_read_to`` and link the records made here
        that are not stored yet after it."""
        stored = await self.log.read(self._read_to)
        if not stored:
            return
        self._read_to = stored[-1][0]
        tail = stored[-1][1]
        seq, prev = tail.get("seq"), tail.get("hash")
        if not isinstance(seq, int) or not isinstance(prev, str):
            return
        for r in self.writer.pending:
            seq += 1
            r["seq"], r["prevHash"] = seq, prev
            r["hash"] = prev = _hash(r)
        self._seq, self._last_hash = seq, prev

    async def close(self) -> None:
        await self.stored()

    def record(self, actor: str, action: str, *, session_id: str | None = None,
               detail: dict[str, Any] | str | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {"seq": self._seq + 1, "ts": int(time.time() * 1000), "actor": actor,
                               "action": action}
        if session_id:
            rec["sessionId"] = session_id
        rec["detail"] = detail if detail is not None else {}
        rec["prevHash"] = self._last_hash
        rec["hash"] = _hash(rec)
        self._seq, self._last_hash = rec["seq"], rec["hash"]
        self.writer.put(rec)
        return rec

    async def stored(self) -> bool:
        """Store every record made so far; True once they all are. A store error is logged (the audit must not
        take the daemon down), the records stay queued for the next try, and the answer is False."""
        return await self.writer.stored()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.writer.run(task_status=task_status)

    async def read_all(self) -> list[dict[str, Any]]:
        """Every record, oldest first: those stored, then those on their way (stored first when the store takes
        them, so a seq a reader saw is durable and never given to another record after a crash)."""
        await self.stored()
        async with self.writer.lock:
            stored = [r for _, r in await self.log.read()]
            return stored + list(self.writer.pending)

    async def query(self, *, actor: str | None = None, action: str | None = None, session_id: str | None = None,
              since: int | None = None, until: int | None = None, cursor: int | None = None, limit: int = 100,
              reverse: bool = False) -> tuple[list[dict[str, Any]], int | None]:
        def match(r: dict[str, Any]) -> bool:
            if "_corrupt" in r:
                return False
            if actor is not None and r.get("actor") != actor:
                return False
            if action is not None:
                if action.endswith("*"):
                    if not str(r.get("action", "")).startswith(action[:-1]):
                        return False
                elif r.get("action") != action:
                    return False
            if session_id is not None and r.get("sessionId") != session_id:
                return False
            ts = r.get("ts", 0)
            if (since is not None and ts < since) or (until is not None and ts > until):
                return False
            if cursor is not None and ((r["seq"] >= cursor) if reverse else (r["seq"] <= cursor)):
                return False
            return True
        records = [r for r in await self.read_all() if match(r)]
        if reverse:
            records.reverse()
        page = records[:limit]
        next_cursor = page[-1]["seq"] if len(records) > limit else None
        return page, next_cursor

    async def verify(self) -> dict[str, Any]:
        return verify_records(await self.read_all())

    @staticmethod
    def to_ndjson(records: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)

    @staticmethod
    def to_csv(records: list[dict[str, Any]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["seq", "ts", "actor", "action", "sessionId", "detail", "prevHash", "hash"])
        for r in records:
            w.writerow([r.get("seq"), r.get("ts"), r.get("actor"), r.get("action"), r.get("sessionId", ""),
                        json.dumps(r.get("detail"), separators=(",", ":")), r.get("prevHash"), r.get("hash")])
        return buf.getvalue()
