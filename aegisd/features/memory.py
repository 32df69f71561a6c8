"""The memory bridge: a small key-value store shared by sessions (opt-in: `memoryBridge: {enabled: true}`).

Keys are `namespace/key`; entries may expire (TTL up to 30 days, checked lazily; expired entries leave the
store at the next start); one document per entry in the store's `memory` collection (aegisd/store), written
before a change is acknowledged, read from memory (an earlier version's `<state>/memory.json` is moved into the
store at the first start; ``reload`` reads again what another node of a cluster changed). Each owner (the API
key or SSO principal that wrote an entry; None for the master token and local callers) has a key space of its
own: two keys may both keep `project/notes` without seeing or overwriting each other's."""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from aegisd.core.errors import NotFound, PayloadTooLarge, ValidationError
from aegisd.core.models import now_ms
from aegisd.store import Collection, migrate_legacy

KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)+$")
MAX_VALUE = 100 * 1024
MAX_TTL_S = 30 * 86_400


class MemoryEntry(msgspec.Struct):
    key: str
    value: str
    namespace: str
    created_at: int
    updated_at: int
    expires_at: int | None = None
    ownerKeyId: str | None = None


Slot = tuple[str | None, str]  # (owner, key)


def _doc_key(slot: Slot) -> str:
    """The document key of an owner's entry: unambiguous whatever the owner and key contain."""
    return msgspec.json.encode(list(slot)).decode()


def _entry(doc: Any, now: int) -> MemoryEntry | None:
    """The stored entry, unless it is missing, unreadable or expired."""
    if doc is None:
        return None
    try:
        e = msgspec.convert(doc, MemoryEntry)
    except msgspec.ValidationError:
        return None
    return None if e.expires_at is not None and e.expires_at <= now else e


class MemoryStore:
    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self._items: dict[Slot, MemoryEntry] = {}

    async def open(self, *, legacy: Path | None = None) -> None:
        """Load the entries, dropping expired ones (after moving an earlier version's memory.json into the store)."""
        if legacy is not None:
            await migrate_legacy(legacy, lambda p: msgspec.json.decode(p.read_bytes(), type=list[MemoryEntry]),
                                 self._put_all)
        self._items = {}
        now = now_ms()
        for key, doc in (await self.collection.list()).items():
            try:
                e = msgspec.convert(doc, MemoryEntry)
            except msgspec.ValidationError:
                continue
            if e.expires_at is not None and e.expires_at <= now:
                await self.collection.delete(key)
                continue
            self._items[(e.ownerKeyId, e.key)] = e

    async def reload(self, doc_key: str | None = None) -> None:
        """Another node changed the entry stored under ``doc_key`` (None: any): re-read it (or them all) and
        replace what is cached. Expired entries are left out (the next start deletes them from the store). Raises
        the store's error (StoreUnavailable) for the caller to retry."""
        now = now_ms()
        if doc_key is None:
            items: dict[Slot, MemoryEntry] = {}
            for doc in (await self.collection.list()).values():
                e = _entry(doc, now)
                if e is not None:
                    items[(e.ownerKeyId, e.key)] = e
            self._items = items
            return
        e = _entry(await self.collection.get(doc_key), now)
        if e is not None:
            self._items[(e.ownerKeyId, e.key)] = e
            return
        try:  # gone (or expired): its slot is in the document key
            owner, key = msgspec.json.decode(doc_key)
        except (msgspec.DecodeError, ValueError, TypeError):
            return
        self._items.pop((owner, key), None)

    async def _put_all(self, items: builtins.list[MemoryEntry]) -> None:
        for e in items:
            await self.collection.put(_doc_key((e.ownerKeyId, e.key)), msgspec.to_builtins(e))

    def _load(self) -> dict[Slot, MemoryEntry]:
        now = now_ms()
        expired = [k for k, e in self._items.items() if e.expires_at is not None and e.expires_at <= now]
        for k in expired:  # gone from the store at the next start
            del self._items[k]
        return self._items

    @staticmethod
    def check_key(key: str) -> str:
        if len(key) > 256 or not KEY_RE.match(key):
            raise ValidationError("memory keys look like 'namespace/key' (letters, digits, _ . : -), at most 256")
        return key

    async def set(self, key: str, value: str, ttl_seconds: int | None = None, *, owner: str | None) -> MemoryEntry:
        self.check_key(key)
        if len(value.encode()) > MAX_VALUE:
            raise PayloadTooLarge(f"memory values are at most {MAX_VALUE} bytes")
        if ttl_seconds is not None and not (1 <= ttl_seconds <= MAX_TTL_S):
            raise ValidationError(f"ttlSeconds must be between 1 and {MAX_TTL_S}")
        items = self._load()
        now = now_ms()
        old = items.get((owner, key))
        entry = MemoryEntry(key=key, value=value, namespace=key.split("/", 1)[0],
                            created_at=old.created_at if old else now, updated_at=now,
                            expires_at=now + ttl_seconds * 1000 if ttl_seconds else None, ownerKeyId=owner)
        await self.collection.put(_doc_key((owner, key)), msgspec.to_builtins(entry))
        items[(owner, key)] = entry
        return entry

    def get(self, key: str, *, owner: str | None) -> MemoryEntry:
        entry = self._load().get((owner, key))
        if entry is None:
            raise NotFound(f"no memory entry {key!r}")
        return entry

    async def delete(self, key: str, *, owner: str | None) -> None:
        self.get(key, owner=owner)
        await self.collection.delete(_doc_key((owner, key)))
        self._load().pop((owner, key), None)

    def list(self, prefix: str | None = None, *, owners: Callable[[str | None], bool]) -> list[MemoryEntry]:
        """Entries whose owner passes ``owners`` (a caller's: its own, or every one for an admin)."""
        return sorted((e for e in self._load().values()
                       if owners(e.ownerKeyId) and (not prefix or e.key.startswith(prefix))),
                      key=lambda e: (e.key, e.ownerKeyId or ""))

    def context(self, keys: builtins.list[str], *, owner: str | None) -> str:
        """The `[Memory context]` block prepended to a prompt for `memoryKeys`: the owner's entries only."""
        found = [self._load().get((owner, k)) for k in keys]
        lines = [f"{e.key}: {e.value}" for e in found if e is not None]
        return "[Memory context]\n" + "\n".join(lines) + "\n\n" if lines else ""


def entry_view(e: MemoryEntry) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(e)
    return out
