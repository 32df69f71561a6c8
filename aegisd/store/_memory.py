"""An in-memory store (tests, benchmarks, `sessionStore: memory` is not offered to users)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio

from aegisd.core.models import Event, SessionRecord, TranscriptEntry
from aegisd.store._health import StoreHealth


class MemoryStore:
    on_fenced: Callable[[str | None, str], None] | None = None
    assigns_event_ids = False
    name = "memory"

    def __init__(self) -> None:
        self.sessions: dict[str, bytes] = {}
        self.transcripts: dict[str, list[TranscriptEntry]] = {}
        self.events: list[Event] = []
        self.docs: dict[str, dict[str, bytes]] = {}  # encoded, so a caller's later changes do not leak in
        self.logs: dict[str, list[tuple[int, bytes]]] = {}
        self.log_seq: dict[str, int] = {}
        self.health = StoreHealth("memory")

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # memory does not fail

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def load_sessions(self) -> list[SessionRecord]:
        recs = [msgspec.json.decode(b, type=SessionRecord) for b in self.sessions.values()]
        return sorted(recs, key=lambda r: r.createdAt)

    async def save_session(self, record: SessionRecord) -> None:
        self.sessions[record.id] = msgspec.json.encode(record)

    async def delete_session(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.transcripts.pop(session_id, None)

    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None:
        self.transcripts.setdefault(session_id, []).extend(entries)

    async def read_transcript(self, session_id: str, start: int = 0,
                              limit: int | None = None) -> list[TranscriptEntry]:
        entries = self.transcripts.get(session_id, [])
        return entries[start:] if limit is None else entries[start:start + limit]

    async def transcript_count(self, session_id: str) -> int:
        return len(self.transcripts.get(session_id, []))

    async def append_events(self, events: list[Event]) -> None:
        self.events.extend(events)

    async def read_events(self, *, session_id: str | None, after_id: int, limit: int = 1000) -> list[Event]:
        out = [e for e in self.events if e.id > after_id and (session_id is None or e.sessionId == session_id)]
        return out[:limit]

    async def last_event_id(self) -> int:
        return self.events[-1].id if self.events else 0

    async def doc_get(self, collection: str, key: str) -> Any | None:
        raw = self.docs.get(collection, {}).get(key)
        return None if raw is None else msgspec.json.decode(raw)

    async def doc_put(self, collection: str, key: str, doc: Any) -> None:
        self.docs.setdefault(collection, {})[key] = msgspec.json.encode(doc)

    async def doc_delete(self, collection: str, key: str) -> None:
        self.docs.get(collection, {}).pop(key, None)

    async def doc_list(self, collection: str) -> dict[str, Any]:
        return {k: msgspec.json.decode(v) for k, v in self.docs.get(collection, {}).items()}

    async def log_append(self, log: str, record: Any) -> int:
        seq = self.log_seq[log] = self.log_seq.get(log, 0) + 1
        self.logs.setdefault(log, []).append((seq, msgspec.json.encode(record)))
        return seq

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        out = [(s, msgspec.json.decode(b)) for s, b in self.logs.get(log, []) if s > after]
        return out if limit is None else out[:limit]

    async def log_trim(self, log: str, before: int) -> None:
        self.logs[log] = [(s, b) for s, b in self.logs.get(log, []) if s >= before]
