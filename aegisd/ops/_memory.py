"""Memory bridge operations (404 unless `memoryBridge.enabled`). Each owner has its own key space
(aegisd/features/memory.py): a caller reads and writes its own entries; admins list everyone's and may name another
owner's entry with `ownerKeyId`. A session's entries live in its owner's space."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from aegisd.core.errors import NotFound, ValidationError
from aegisd.features.memory import MemoryEntry
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Ok


class SetParams(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: str
    ttlSeconds: Annotated[int, msgspec.Meta(ge=1)] | None = None


class KeyParams(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    ownerKeyId: str | None = None  # another owner's entry (admins); default: the caller's own


class MemoryListParams(msgspec.Struct, forbid_unknown_fields=True):
    prefix: str | None = None


class ScopeParams(msgspec.Struct, forbid_unknown_fields=True):
    scope: str


class SessionSetParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    value: str
    ttlSeconds: Annotated[int, msgspec.Meta(ge=1)] | None = None


class SessionParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class EntrySet(msgspec.Struct):
    ok: bool
    entry: MemoryEntry


class OneEntry(msgspec.Struct):
    entry: MemoryEntry


class Entries(msgspec.Struct):
    entries: list[MemoryEntry]


class ScopeEntries(msgspec.Struct):
    scope: str  # project | user | team
    entries: list[MemoryEntry]


class SessionEntries(msgspec.Struct):
    sessionId: str
    entries: list[MemoryEntry]


def _store(ctx: OpContext) -> Any:
    if not ctx.services.config.memoryBridge.get("enabled"):
        raise NotFound("the memory bridge is off (set memoryBridge: {enabled: true} in the config)")
    return ctx.services.memory


def _owner(ctx: OpContext, p: KeyParams) -> str | None:
    """Whose entry ``p`` names: the caller's own, or the one ``ownerKeyId`` gives if the caller may see it
    (another key's entry is as absent as a missing one)."""
    if p.ownerKeyId is None or p.ownerKeyId == "":
        return ctx.owner_of()
    if not ctx.owns(p.ownerKeyId):
        raise NotFound(f"no memory entry {p.key!r}")
    return p.ownerKeyId


def _mine(ctx: OpContext) -> Callable[[str | None], bool]:
    return lambda owner: ctx.owns(owner)


@op("memory.set", SetParams, result=EntrySet, permission="send",
    summary="Set a memory entry (namespace/key, optional TTL) in the caller's own space")
async def set_entry(ctx: OpContext, p: SetParams) -> EntrySet:
    return EntrySet(ok=True, entry=_store(ctx).set(p.key, p.value, p.ttlSeconds, owner=ctx.owner_of()))


@op("memory.list", MemoryListParams, result=Entries,
    summary="List memory entries (optionally by key prefix): the caller's own, or everyone's for admins")
async def list_entries(ctx: OpContext, p: MemoryListParams) -> Entries:
    return Entries(entries=list(_store(ctx).list(p.prefix, owners=_mine(ctx))))


@op("memory.get", KeyParams, result=OneEntry, summary="One memory entry")
async def get_entry(ctx: OpContext, p: KeyParams) -> OneEntry:
    return OneEntry(entry=_store(ctx).get(p.key, owner=_owner(ctx, p)))


@op("memory.delete", KeyParams, result=Ok, summary="Delete a memory entry", permission="send")
async def delete_entry(ctx: OpContext, p: KeyParams) -> Ok:
    _store(ctx).delete(p.key, owner=_owner(ctx, p))
    return Ok(ok=True)


@op("memory.scope", ScopeParams, result=ScopeEntries, summary="Entries of a scope: project, user or team")
async def scoped(ctx: OpContext, p: ScopeParams) -> ScopeEntries:
    if p.scope not in ("project", "user", "team"):
        raise ValidationError("scope must be project, user or team")
    return ScopeEntries(scope=p.scope, entries=list(_store(ctx).list(p.scope + "/", owners=_mine(ctx))))


@op("session.memories.set", SessionSetParams, result=EntrySet, summary="A memory entry linked to a session",
    permission="send")
async def session_set(ctx: OpContext, p: SessionSetParams) -> EntrySet:
    rec = ctx.session(p.id)
    entry = _store(ctx).set(f"session:{rec.id}/{p.key}", p.value, p.ttlSeconds, owner=rec.ownerKeyId)
    return EntrySet(ok=True, entry=entry)


@op("session.memories.list", SessionParams, result=SessionEntries, summary="The memory entries linked to a session")
async def session_list(ctx: OpContext, p: SessionParams) -> SessionEntries:
    rec = ctx.session(p.id)
    entries = _store(ctx).list(f"session:{rec.id}/", owners=lambda owner: owner == rec.ownerKeyId)
    return SessionEntries(sessionId=rec.id, entries=list(entries))
