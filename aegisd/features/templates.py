"""Session templates: named presets (workDir, prompt, mode, agent, model...) in `<state>/templates.json`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec

from aegisd.core.errors import NotFound
from aegisd.core.models import now_ms
from aegisd.store._fs import atomic_write


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
    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: dict[str, Template] | None = None

    def _load(self) -> dict[str, Template]:
        if self._items is None:
            try:
                data = msgspec.json.decode(self.path.read_bytes(), type=list[Template])
            except FileNotFoundError:
                data = []
            self._items = {t.id: t for t in data}
        return self._items

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, msgspec.json.encode(list(self._load().values())))

    def list(self) -> list[Template]:
        return sorted(self._load().values(), key=lambda t: t.createdAt)

    def get(self, tid: str) -> Template:
        t = self._load().get(tid)
        if t is None:
            raise NotFound(f"template {tid} not found")
        return t

    def create(self, fields: TemplateFields, *, owner: str | None, defaults: dict[str, Any] | None = None) -> Template:
        values = {**(defaults or {}), **msgspec.to_builtins(fields)}
        ts = now_ms()
        t = msgspec.convert({**values, "id": str(uuid.uuid4()), "createdAt": ts, "updatedAt": ts,
                             "ownerKeyId": owner}, Template)
        self._load()[t.id] = t
        self._save()
        return t

    def update(self, tid: str, fields: TemplateFields) -> Template:
        t = self.get(tid)
        changed = msgspec.structs.replace(t, **msgspec.to_builtins(fields), updatedAt=now_ms())
        self._load()[tid] = changed
        self._save()
        return changed

    def delete(self, tid: str) -> None:
        self.get(tid)
        del self._load()[tid]
        self._save()
