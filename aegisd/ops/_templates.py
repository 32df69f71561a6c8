"""Template operations."""

from __future__ import annotations

from typing import Any

import msgspec

from aegisd.core.errors import NotFound, ValidationError
from aegisd.features.templates import Template, TemplateFields
from aegisd.ops._registry import OpContext, op


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class TemplateId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class CreateTemplate(TemplateFields, forbid_unknown_fields=True, kw_only=True):
    sessionId: str | None = None  # copy workDir, mode, agent, model and stall threshold from this session


class UpdateTemplate(TemplateFields, forbid_unknown_fields=True, kw_only=True):
    id: str


def owned_template(ctx: OpContext, tid: str) -> Template:
    """A template this caller may see, use and change; another key's template is as absent as a missing one."""
    t = ctx.services.templates.get(tid)
    if not ctx.owns(t.ownerKeyId):
        raise NotFound(f"template {tid} not found")
    return t


@op("template.create", CreateTemplate, summary="Create a session template", permission="create")
async def create(ctx: OpContext, p: CreateTemplate) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if p.sessionId:
        rec = ctx.session(p.sessionId)
        defaults = {"workDir": rec.workDir, "permissionMode": rec.permissionMode, "agent": rec.agent,
                    "model": rec.model, "stallThresholdMs": rec.stallThresholdMs}
    fields = msgspec.convert({k: v for k, v in msgspec.to_builtins(p).items() if k != "sessionId"}, TemplateFields)
    if not fields.name:
        raise ValidationError("name is required")
    if fields.workDir:
        ctx.services.manager.workdirs.validate(fields.workDir)
    elif not defaults.get("workDir"):
        raise ValidationError("workDir is required (or sessionId to copy it from)")
    t = await ctx.services.templates.create(fields, owner=ctx.owner_of(), defaults=defaults)
    out: dict[str, Any] = msgspec.to_builtins(t)
    return out


@op("template.list", Empty, summary="List templates")
async def list_templates(ctx: OpContext, p: Empty) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(t) for t in ctx.services.templates.list() if ctx.owns(t.ownerKeyId)]


@op("template.get", TemplateId, summary="One template")
async def get(ctx: OpContext, p: TemplateId) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(owned_template(ctx, p.id))
    return out


@op("template.update", UpdateTemplate, summary="Change a template (only the fields given)", permission="create")
async def update(ctx: OpContext, p: UpdateTemplate) -> dict[str, Any]:
    owned_template(ctx, p.id)
    fields = msgspec.convert({k: v for k, v in msgspec.to_builtins(p).items() if k != "id"}, TemplateFields)
    if fields.workDir:
        ctx.services.manager.workdirs.validate(fields.workDir)
    out: dict[str, Any] = msgspec.to_builtins(await ctx.services.templates.update(p.id, fields))
    return out


@op("template.delete", TemplateId, summary="Delete a template", permission="create")
async def delete(ctx: OpContext, p: TemplateId) -> dict[str, Any]:
    owned_template(ctx, p.id)
    await ctx.services.templates.delete(p.id)
    return {"ok": True}
