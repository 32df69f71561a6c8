"""Memory bridge operations (404 unless `memoryBridge.enabled`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..errors import NotFound, ValidationError
from ..memory import entry_view
from ._registry import OpContext, op


class SetParams(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: str
    ttlSeconds: Annotated[int, msgspec.Meta(ge=1)] | None = None


class KeyParams(msgspec.Struct, forbid_unknown_fields=True):
    key: str


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
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


def _store(ctx: OpContext) -> Any:
    if not ctx.daemon.config.memoryBridge.get("enabled"):
        raise NotFound("the memory bridge is off (set memoryBridge: {enabled: true} in the config)")
    return ctx.daemon.memory


@op("memory.set", SetParams, summary="Set a memory entry (namespace/key, optional TTL)", permission="send")
async def set_entry(ctx: OpContext, p: SetParams) -> dict[str, Any]:
    return {"ok": True, "entry": entry_view(_store(ctx).set(p.key, p.value, p.ttlSeconds))}


@op("memory.list", ListParams, summary="List memory entries (optionally by key prefix)")
async def list_entries(ctx: OpContext, p: ListParams) -> dict[str, Any]:
    return {"entries": [entry_view(e) for e in _store(ctx).list(p.prefix)]}


@op("memory.get", KeyParams, summary="One memory entry")
async def get_entry(ctx: OpContext, p: KeyParams) -> dict[str, Any]:
    return {"entry": entry_view(_store(ctx).get(p.key))}


@op("memory.delete", KeyParams, summary="Delete a memory entry", permission="send")
async def delete_entry(ctx: OpContext, p: KeyParams) -> dict[str, Any]:
    _store(ctx).delete(p.key)
    return {"ok": True}


@op("memory.scope", ScopeParams, summary="Entries of a scope: project, user or team")
async def scoped(ctx: OpContext, p: ScopeParams) -> dict[str, Any]:
    if p.scope not in ("project", "user", "team"):
        raise ValidationError("scope must be project, user or team")
    return {"scope": p.scope, "entries": [entry_view(e) for e in _store(ctx).list(p.scope + "/")]}


@op("session.memories.set", SessionSetParams, summary="A memory entry linked to a session", permission="send")
async def session_set(ctx: OpContext, p: SessionSetParams) -> dict[str, Any]:
    rec = ctx.daemon.session(ctx, p.id)
    return {"ok": True, "entry": entry_view(_store(ctx).set(f"session:{rec.id}/{p.key}", p.value, p.ttlSeconds))}


@op("session.memories.list", SessionParams, summary="The memory entries linked to a session")
async def session_list(ctx: OpContext, p: SessionParams) -> dict[str, Any]:
    rec = ctx.daemon.session(ctx, p.id)
    return {"sessionId": rec.id, "entries": [entry_view(e) for e in _store(ctx).list(f"session:{rec.id}/")]}
