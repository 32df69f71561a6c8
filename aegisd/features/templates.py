"""Session templates: named presets (workDir, prompt, mode, agent, model...), one document each in the store's
`templates` collection (aegisd/store); read from memory, loaded at start, re-read by ``reload`` when another
node of a cluster changed one. An earlier version's
`<state>/templates.json` is moved into the store at the first start."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec

from aegisd.core.errors import NotFound
from aegisd.core.models import now_ms
from aegisd.store import Collection, migrate_legacy


class TemplateFields(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    workDir: str | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    permissionMode: str | None = None
    autoApprove: bool | None = None
    agent: str | None = None
    model: str | None = None
    stallThresholdMs: Annotated[int, msgspec.Meta(ge=1000, le=3_600_000)] | None = None
    memoryKeys: list[str] | None = None
    claudeCommand: str | None = None
    env: dict[str, str] | None = None


class Template(msgspec.Struct):
    id: str
    name: str
    createdAt: int
    updatedAt: int
    description: str | None = None
    workDir: str | None = None
    prompt: str | None = None
    permissionMode: str | None = None
    autoApprove: bool | None = None
    agent: str | None = None
    model: str | None = None
    stallThresholdMs: int | None = None
    memoryKeys: list[str] | None = None
    claudeCommand: str | None = None
    env: dict[str, str] | None = None
    ownerKeyId: str | None = None


class TemplateStore:
    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self._items: dict[str, Template] = {}

    async def open(self, *, legacy: Path | None = None) -> None:
        """Load every template (after moving an earlier version's templates.json into the store)."""
        if legacy is not None:
            await migrate_legacy(legacy, lambda p: msgspec.json.decode(p.read_bytes(), type=list[Template]),
                                 self._put_all)
        self._items = {}
        for key, doc in (await self.collection.list()).items():
            try:
                self._items[key] = msgspec.convert(doc, Template)
            except msgspec.ValidationError:
                continue

    async def reload(self, tid: str | None = None) -> None:
        """Another node changed template ``tid`` (None: any) in the store: re-read it (or them all) and replace
        what is cached. Raises the store's error (StoreUnavailable) for the caller to retry."""
        if tid is None:
            items: dict[str, Template] = {}
            for key, doc in (await self.collection.list()).items():
                try:
                    items[key] = msgspec.convert(doc, Template)
                except msgspec.ValidationError:
                    continue
            self._items = items
            return
        doc = await self.collection.get(tid)
        try:
            t = None if doc is None else msgspec.convert(doc, Template)
        except msgspec.ValidationError:
            t = None
        if t is None:
            self._items.pop(tid, None)
        else:
            self._items[tid] = t

    async def _put_all(self, items: list[Template]) -> None:
        for t in items:
            await self.collection.put(t.id, msgspec.to_builtins(t))

    def _load(self) -> dict[str, Template]:
        return self._items

    def list(self) -> list[Template]:
        return sorted(self._load().values(), key=lambda t: t.createdAt)

    def get(self, tid: str) -> Template:
        t = self._load().get(tid)
        if t is None:
            raise NotFound(f"template {tid} not found")
        return t

    async def create(self, fields: TemplateFields, *, owner: str | None,
                     defaults: dict[str, Any] | None = None) -> Template:
        values = {**(defaults or {}), **msgspec.to_builtins(fields)}
        ts = now_ms()
        t = msgspec.convert({**values, "id": str(uuid.uuid4()), "createdAt": ts, "updatedAt": ts,
                             "ownerKeyId": owner}, Template)
        await self.collection.put(t.id, msgspec.to_builtins(t))
        self._items[t.id] = t
        return t

    async def update(self, tid: str, fields: TemplateFields) -> Template:
        t = self.get(tid)
        changed = msgspec.structs.replace(t, **msgspec.to_builtins(fields), updatedAt=now_ms())
        await self.collection.put(tid, msgspec.to_builtins(changed))
        self._items[tid] = changed
        return changed

    async def delete(self, tid: str) -> None:
        self.get(tid)
        await self.collection.delete(tid)
        self._items.pop(tid, None)
