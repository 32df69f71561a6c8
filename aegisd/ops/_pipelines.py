"""Pipeline operations."""

from __future__ import annotations

from typing import Any

import msgspec

from aegisd.features.pipelines import PipelineSpec
from aegisd.ops._registry import OpContext, op


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class PipelineId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


def _visible(ctx: OpContext, p: Any) -> bool:
    pr = ctx.principal
    if pr.kind == "agent":  # its own pipelines, and those of the sessions it created
        creator = p.creatorSessionId
        return creator is not None and (creator == pr.session_id or ctx.can_act(creator))
    return ctx.owns(p.ownerKeyId)


@op("pipeline.create", PipelineSpec, summary="Create and start a pipeline of dependent stages", permission="create")
async def create(ctx: OpContext, p: PipelineSpec) -> dict[str, Any]:
    owner, creator = ctx.creator()
    rec = await ctx.services.pipelines.create(p, owner=owner, creator=creator)
    ctx.audit("pipeline.create", detail={"pipelineId": rec.id, "stages": len(rec.stages)})
    out: dict[str, Any] = msgspec.to_builtins(rec)
    return out


@op("pipeline.list", Empty, summary="List pipelines, newest first")
async def list_pipelines(ctx: OpContext, p: Empty) -> list[dict[str, Any]]:
    recs = [r for r in ctx.services.pipelines.records.values() if _visible(ctx, r)]
    return [msgspec.to_builtins(r) for r in sorted(recs, key=lambda r: r.createdAt, reverse=True)]


@op("pipeline.get", PipelineId, summary="One pipeline and its stages")
async def get(ctx: OpContext, p: PipelineId) -> dict[str, Any]:
    rec = ctx.services.pipelines.get(p.id)
    if not _visible(ctx, rec):
        from aegisd.core.errors import Forbidden

        raise Forbidden(f"pipeline {p.id} belongs to another key")
    out: dict[str, Any] = msgspec.to_builtins(rec)
    return out
