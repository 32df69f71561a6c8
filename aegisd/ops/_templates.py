"""Template operations."""

from __future__ import annotations

from typing import Any

import msgspec

from aegisd.core.errors import NotFound, ValidationError
from aegisd.features.templates import Template, TemplateFields
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Empty, Ok


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


@op("template.create", CreateTemplate, result=Template, summary="Create a session template", permission="create")
async def create(ctx: OpContext, p: CreateTemplate) -> Template:
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
    return ctx.services.templates.create(fields, owner=ctx.owner_of(), defaults=defaults)


@op("template.list", Empty, result=list[Template], summary="List templates")
async def list_templates(ctx: OpContext, p: Empty) -> list[Template]:
    return [t for t in ctx.services.templates.list() if ctx.owns(t.ownerKeyId)]


@op("template.get", TemplateId, result=Template, summary="One template")
async def get(ctx: OpContext, p: TemplateId) -> Template:
    return owned_template(ctx, p.id)


@op("template.update", UpdateTemplate, result=Template, summary="Change a template (only the fields given)",
    permission="create")
async def update(ctx: OpContext, p: UpdateTemplate) -> Template:
    owned_template(ctx, p.id)
    fields = msgspec.convert({k: v for k, v in msgspec.to_builtins(p).items() if k != "id"}, TemplateFields)
    if fields.workDir:
        ctx.services.manager.workdirs.validate(fields.workDir)
    return ctx.services.templates.update(p.id, fields)


@op("template.delete", TemplateId, result=Ok, summary="Delete a template", permission="create")
async def delete(ctx: OpContext, p: TemplateId) -> Ok:
    owned_template(ctx, p.id)
    ctx.services.templates.delete(p.id)
    return Ok(ok=True)
