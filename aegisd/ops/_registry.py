"""The operations registry: each operation is defined once, with typed msgspec params and a typed result (a
struct, or a list or dict of them; for a stream, the type of each item), and dispatched from the control
socket, `POST /v1/rpc`, the REST routes, Telegram and the MCP tools. The OpenAPI document is generated from
the same params and results (aegisd/surfaces/http/_openapi.py)."""

from __future__ import annotations

import secrets
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from aegisd.auth.principal import Principal
from aegisd.core.errors import (
    QuotaExceeded,
    SessionNotFound,
    StoreUnavailable,
    Unavailable,
    UnknownOperation,
    ValidationError,
)
from aegisd.core.input import check

if TYPE_CHECKING:
    from aegisd.core.models import SessionRecord
    from aegisd.ops._services import Services


@dataclass
class OpContext:
    """One call of an operation: the services it runs on, who calls, and through what. Access control reads as
    plain calls: ``ctx.session(id)`` (the session, if the caller may see it), ``ctx.visible(records)``,
    ``ctx.owns(owner)``, ``ctx.audit(action, …)`` — all decided by aegisd/auth/access.py."""

    services: Services
    principal: Principal = field(default_factory=Principal)
    request_id: str = field(default_factory=lambda: secrets.token_hex(8))
    surface: str = "socket"  # socket | http | rpc | pipeline | cluster
    ip: str = "local"
    forwarded: bool = False  # another node of the cluster passed this call on: run it here, never forward it

    def session(self, ident: str, *, act: bool = False) -> SessionRecord:
        return self.services.access.session(self.principal, ident, act=act)

    def visible(self, recs: Iterable[SessionRecord]) -> list[SessionRecord]:
        return self.services.access.visible(self.principal, recs)

    def can_see(self, session_id: str) -> bool:
        return self.services.access.can_see(self.principal, session_id)

    def can_act(self, session_id: str) -> bool:
        return self.services.access.can_act(self.principal, session_id)

    def owns(self, owner: str | None) -> bool:
        return self.services.access.owns(self.principal, owner)

    def owner_of(self) -> str | None:
        return self.services.access.owner_of(self.principal)

    def creator(self) -> tuple[str | None, str | None]:
        return self.services.access.creator(self.principal)

    def audit(self, action: str, *, session_id: str | None = None, detail: Any = None) -> None:
        """Add a record to the trail; `call` answers only once it is stored."""
        self.services.access.record(self.principal, action, session_id=session_id, detail=detail)


Handler = Callable[[OpContext, Any], Awaitable[Any]]
StreamHandler = Callable[[OpContext, Any], AsyncIterator[Any]]


@dataclass(frozen=True)
class Op:
    name: str
    params: type
    handler: Callable[..., Any]
    summary: str
    result: Any  # what the handler returns (a stream: each item it yields), as a type msgspec knows
    stream: bool = False
    # create | send | approve | reject | kill: that permission; admin: admins only; operator: admins and
    # operators; public: anyone, even
    # unauthenticated; None: any authenticated caller (reads)
    permission: str | None = None


REGISTRY: dict[str, Op] = {}


def op(name: str, params: type, *, result: Any, summary: str, stream: bool = False,
       permission: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise RuntimeError(f"operation {name} defined twice")
        REGISTRY[name] = Op(name=name, params=params, handler=fn, summary=summary, result=result,
                            stream=stream, permission=permission)
        return fn
    return register


def get_op(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOperation(f"unknown operation {name!r}") from None


def decode_params(o: Op, raw: Any, *, strict: bool = True) -> Any:
    """Validate params (a dict, or None) into the op's struct. ``strict=False`` converts strings, as query
    strings need."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{o.name}: params must be an object")
    what = f"params of {o.name}"
    check(raw, what=what)  # whichever surface they came from (a WebSocket, Telegram, the MCP server...)
    try:
        params: Any = msgspec.convert(raw, o.params, strict=strict)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid params for {o.name}: {exc}") from None
    if not strict:  # strings converted to numbers (query strings): "1e400", twenty-digit integers
        check(msgspec.to_builtins(params), what=what)
    return params


async def call(ctx: OpContext, name: str, raw: Any, *, strict: bool = True) -> Any:
    """Run an operation for a surface: its result in wire form (the typed result as JSON-ready builtins,
    what every surface encodes)."""
    return msgspec.to_builtins(await call_typed(ctx, name, raw, strict=strict))


async def call_typed(ctx: OpContext, name: str, raw: Any, *, strict: bool = True) -> Any:
    """Run an operation: its typed result (an instance of ``get_op(name).result``)."""
    o = get_op(name)
    if o.stream:
        raise ValidationError(f"{name} is a streaming operation")
    params = decode_params(o, raw, strict=strict)
    ctx.services.access.authorize(ctx.principal, o.name, o.permission, params)
    cluster = ctx.services.cluster
    if cluster is not None and cluster.multi_node and not ctx.forwarded and _session_scoped(o):
        # a live session another node runs: the operation runs there (its answer, or its error, is this one's)
        try:
            rec = ctx.session(params.id)
        except SessionNotFound:  # created a moment ago on another node: not heard of here yet
            await cluster.lookup(params.id)
            rec = ctx.session(params.id)
        for attempt in (1, 2):
            try:
                url = cluster.owner_url(rec)
                if url is None:
                    break
                answer = await cluster.forward(url, name, msgspec.to_builtins(params), ctx.principal,
                                               ctx.request_id)
            except Unavailable:
                # the owner is lost or did not answer: the session may have moved meanwhile (read it again)
                fresh = await cluster.refresh(rec.id)
                if attempt == 1 and fresh is not None and (fresh.node, fresh.status) != (rec.node, rec.status):
                    rec = fresh
                    continue
                if o.permission is not None:
                    raise
                break  # a read: answered here, from what the store holds, while the session moves
            await cluster.refresh(rec.id)
            return msgspec.convert(answer, o.result)
    try:
        result = await o.handler(ctx, params)
    except QuotaExceeded as exc:
        ctx.audit("session.quota.rejected", session_id=getattr(params, "id", None),
                                detail={"operation": name, "keyId": ctx.principal.key_id, **(exc.details or {})})
        await ctx.services.audit.stored()
        raise
    except BaseException:
        await ctx.services.audit.stored()
        raise
    # acknowledged means stored: the audit records too (they stay queued and are stored once the store is back)
    if not await ctx.services.audit.stored():
        raise StoreUnavailable(f"{name}: the audit record could not be stored (the store is unavailable); "
                               "it is kept and stored once the store is back")
    return result


_SCOPED: dict[str, bool] = {}


def _session_scoped(o: Op) -> bool:
    """Whether the operation acts on one session named by its ``id`` param (a SessionRef)."""
    scoped = _SCOPED.get(o.name)
    if scoped is None:
        from aegisd.ops._types import SessionRef

        scoped = _SCOPED[o.name] = typing.get_type_hints(o.params, include_extras=True).get("id") == SessionRef
    return scoped


def stream(ctx: OpContext, name: str, raw: Any) -> AsyncGenerator[Any, None]:
    """Run a streaming operation: its items, typed (instances of ``get_op(name).result``, which the surfaces
    encode as they are)."""
    o = get_op(name)
    if not o.stream:
        raise ValidationError(f"{name} is not a streaming operation")
    params = decode_params(o, raw)
    ctx.services.access.authorize(ctx.principal, o.name, o.permission, params)
    return o.handler(ctx, params)  # type: ignore[no-any-return]


def results() -> dict[str, Any]:
    """Each operation's result type, by name."""
    return {name: o.result for name, o in REGISTRY.items()}
