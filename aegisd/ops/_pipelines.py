"""Pipeline operations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import msgspec

from aegisd.auth.principal import Principal
from aegisd.core.config import PermissionMode
from aegisd.features.pipelines import PipelineRecord, PipelineSpec, StageSessions, StageState
from aegisd.ops._registry import OpContext, op
from aegisd.ops._sessions import CreateParams, create_session
from aegisd.ops._types import Empty

if TYPE_CHECKING:
    from aegisd.core.models import SessionRecord
    from aegisd.ops._services import Services


class PipelineId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


def _visible(ctx: OpContext, p: Any) -> bool:
    pr = ctx.principal
    if pr.kind == "agent":  # its own pipelines, and those of the sessions it created
        creator = p.creatorSessionId
        return creator is not None and (creator == pr.session_id or ctx.can_act(creator))
    return ctx.owns(p.ownerKeyId)


@op("pipeline.create", PipelineSpec, result=PipelineRecord, permission="create",
    summary="Create and start a pipeline of dependent stages")
async def create(ctx: OpContext, p: PipelineSpec) -> PipelineRecord:
    owner, creator = ctx.creator()
    rec = ctx.services.pipelines.create(p, owner=owner, creator=creator)
    ctx.audit("pipeline.create", detail={"pipelineId": rec.id, "stages": len(rec.stages)})
    return rec


@op("pipeline.list", Empty, result=list[PipelineRecord], summary="List pipelines, newest first")
async def list_pipelines(ctx: OpContext, p: Empty) -> list[PipelineRecord]:
    recs = [r for r in ctx.services.pipelines.records.values() if _visible(ctx, r)]
    return sorted(recs, key=lambda r: r.createdAt, reverse=True)


@op("pipeline.get", PipelineId, result=PipelineRecord, summary="One pipeline and its stages")
async def get(ctx: OpContext, p: PipelineId) -> PipelineRecord:
    rec = ctx.services.pipelines.get(p.id)
    if not _visible(ctx, rec):
        from aegisd.core.errors import Forbidden

        raise Forbidden(f"pipeline {p.id} belongs to another key")
    return rec


def stage_sessions(services: Services) -> StageSessions:
    """How the pipeline manager starts a stage: through :func:`create_session`, as the pipeline's owner (and the
    agent session that created it, if one did), recorded in the audit log as ``session.create`` by
    ``pipeline:<id>``."""

    async def start(p: PipelineRecord, s: StageState) -> SessionRecord:
        principal = Principal(kind="pipeline", key_id=p.ownerKeyId, role="operator", name=f"pipeline:{p.id}")
        ctx = OpContext(services=services, principal=principal, surface="pipeline")
        params = CreateParams(workDir=s.workDir, name=f"pipeline-{p.name}-{s.name}", prompt=s.prompt,
                              permissionMode=cast(PermissionMode | None, s.permissionMode), agent=s.agent,
                              reuse=False)
        rec, _, _ = await create_session(ctx, params, creator=(p.ownerKeyId, p.creatorSessionId),
                                         audit={"pipelineId": p.id, "stage": s.name})
        return rec

    return start
