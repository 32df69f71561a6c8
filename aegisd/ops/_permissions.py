"""Permission decisions and rules: approve or reject the pending request, the permission profile the daemon
enforces on a session's requests, and the original's legacy policy (enforced here, unlike the original)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from aegisd.core.errors import ValidationError
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import IdParams, SessionRef


class DecisionParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    optionId: Annotated[str, msgspec.Meta(
        description="an option of the pending request to pick (default: the least privilege one)")] | None = None
    # the pending request the caller's user saw (pendingPermission.requestId): when given and it is not the
    # one pending, 409 PERMISSION_REQUEST_MISMATCH and nothing is decided
    requestId: Annotated[str, msgspec.Meta(
        min_length=1, max_length=200,
        description="the request this decides (pendingPermission.requestId); if another one is pending, the "
                    "answer is PERMISSION_REQUEST_MISMATCH and nothing is decided")] | None = None


class ProfileParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    defaultBehavior: str | None = None
    rules: list[Any] = []
    # the original TypeScript client's spec sends {profile: allow|deny|ask}: the default behaviour, no rules
    profile: str | None = None


class LegacyRule(msgspec.Struct, forbid_unknown_fields=True):
    ruleBehavior: str
    source: str = "api"
    toolName: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    commandPattern: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class LegacyPermissionsParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    rules: Annotated[list[LegacyRule], msgspec.Meta(max_length=100)] = []


class Decision(msgspec.Struct):
    ok: bool
    optionId: str
    requestId: str  # the request decided


class Profile(msgspec.Struct):
    permissionProfile: dict[str, Any] | None


class ProfileSet(msgspec.Struct):
    permissionProfile: dict[str, Any] | None
    permissionPolicy: list[dict[str, Any]] | None  # the legacy rules, as sent (null: set as a profile)


class PermissionsView(msgspec.Struct):
    permissionPolicy: list[dict[str, Any]]
    permissionProfile: dict[str, Any] | None


async def _decide(ctx: OpContext, p: DecisionParams, verb: str) -> Decision:
    rec = ctx.session(p.id)
    result = Decision(**await ctx.services.manager.command(rec.id, verb, optionId=p.optionId, requestId=p.requestId,
                                                           by=ctx.principal.name))
    ctx.audit(f"permission.{verb}", session_id=rec.id,
              detail={"optionId": result.optionId, "requestId": result.requestId})
    return result


@op("session.approve", DecisionParams, result=Decision, permission="approve",
    summary="Approve the pending permission request")
async def approve(ctx: OpContext, p: DecisionParams) -> Decision:
    return await _decide(ctx, p, "approve")


@op("session.reject", DecisionParams, result=Decision, permission="reject",
    summary="Reject the pending permission request")
async def reject(ctx: OpContext, p: DecisionParams) -> Decision:
    return await _decide(ctx, p, "reject")


@op("session.permission_profile.get", IdParams, result=Profile,
    summary="The permission rules the daemon enforces for a session")
async def get_profile(ctx: OpContext, p: IdParams) -> Profile:
    return Profile(permissionProfile=ctx.session(p.id).permissionProfile)


@op("session.permission_profile.set", ProfileParams, result=ProfileSet, permission="approve",
    summary="Set the permission rules (allow/deny/ask by tool kind or name, command/path globs, read-only, "
            "path and size constraints) the daemon enforces on the session's permission requests")
async def set_profile(ctx: OpContext, p: ProfileParams) -> ProfileSet:
    from aegisd.core.permissions import PermissionProfile, validate_profile

    rec = ctx.session(p.id)
    if p.profile is not None and p.defaultBehavior is not None and p.profile != p.defaultBehavior:
        raise ValidationError("give defaultBehavior or its alias profile, not two different values")
    default = p.defaultBehavior or p.profile or "ask"
    try:
        profile = msgspec.convert({"defaultBehavior": default, "rules": p.rules}, PermissionProfile)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid permission profile: {exc}") from None
    validate_profile(profile)
    result = ProfileSet(**await ctx.services.manager.command(rec.id, "set_profile",
                                                             profile=msgspec.to_builtins(profile)))
    ctx.audit("session.permission_profile", session_id=rec.id,
              detail={"rules": len(profile.rules), "default": profile.defaultBehavior})
    return result


@op("session.permissions.get", IdParams, result=PermissionsView,
    summary="The original's legacy permission policy ([{source, ruleBehavior, toolName, commandPattern}])")
async def get_permissions(ctx: OpContext, p: IdParams) -> PermissionsView:
    rec = ctx.session(p.id)
    return PermissionsView(permissionPolicy=rec.permissionPolicy or [], permissionProfile=rec.permissionProfile)


@op("session.permissions.set", LegacyPermissionsParams, result=ProfileSet, permission="approve",
    summary="Set the legacy permission policy (body: a JSON array of rules). Unlike the original, the rules are "
            "enforced: they become the session's permission profile, and what no rule matches is left to the "
            "permission mode")
async def set_permissions(ctx: OpContext, p: LegacyPermissionsParams) -> ProfileSet:
    from aegisd.core.permissions import PermissionProfile, ProfileRule, validate_profile

    rec = ctx.session(p.id)
    profile = PermissionProfile(defaultBehavior="mode", rules=[
        ProfileRule(tool=r.toolName or "*", behavior=r.ruleBehavior, pattern=r.commandPattern) for r in p.rules])
    validate_profile(profile)
    legacy = [msgspec.to_builtins(r) for r in p.rules]
    result = ProfileSet(**await ctx.services.manager.command(
        rec.id, "set_profile", profile=msgspec.to_builtins(profile), legacy=legacy))
    ctx.audit("session.permission_profile", session_id=rec.id,
              detail={"rules": len(profile.rules), "default": "mode", "legacy": True})
    return result
