"""The audit log: append-only JSON lines, each record hash-chained to the previous one, fsynced as written.

    hash = HMAC-SHA256(key, canonical JSON of the record without `hash`), prevHash of the first = 64 zeros

Editing, deleting or reordering records breaks the chain, which `verify()` reports with the first bad seq."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

CHAIN_KEY = b"aegis-audit-chain-v1"
GENESIS = "0" * 64


def _canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash(record: dict[str, Any]) -> str:
    return hmac.new(CHAIN_KEY, _canonical(record), hashlib.sha256).hexdigest()


class AuditLog:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / "audit.jsonl"
        self._fd: int | None = None
        self._seq = 0
        self._last_hash = GENESIS

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.is_symlink():
            raise OSError(f"refusing a symlinked audit log: {self.path}")
        records = self.read_all()
        if records:
            self._seq, self._last_hash = records[-1].get("seq", len(records)), records[-1].get("hash", GENESIS)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            raise OSError(f"{self.path} is not a regular file")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, actor: str, action: str, *, session_id: str | None = None,
               detail: dict[str, Any] | str | None = None) -> dict[str, Any]:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        rec: dict[str, Any] = {"seq": self._seq + 1, "ts": int(time.time() * 1000), "actor": actor,
                               "action": action}
        if session_id:
            rec["sessionId"] = session_id
        rec["detail"] = detail if detail is not None else {}
        rec["prevHash"] = self._last_hash
        rec["hash"] = _hash(rec)
        os.write(self._fd, json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        os.fsync(self._fd)
        self._seq, self._last_hash = rec["seq"], rec["hash"]
        return rec

    def read_all(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"_corrupt": line.decode(errors="replace")})
        return out

    def query(self, *, actor: str | None = None, action: str | None = None, session_id: str | None = None,
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
        records = [r for r in self.read_all() if match(r)]
        if reverse:
            records.reverse()
        page = records[:limit]
        next_cursor = page[-1]["seq"] if len(records) > limit else None
        return page, next_cursor

    def verify(self) -> dict[str, Any]:
        prev = GENESIS
        records = self.read_all()
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
