"""The operations registry: each operation is defined once, with typed msgspec params and a typed result (a
struct, or a list or dict of them; for a stream, the type of each item), and dispatched from the control
socket, `POST /v1/rpc`, the REST routes, Telegram and the MCP tools. The OpenAPI document is generated from
the same params and results (aegisd/surfaces/http/_openapi.py)."""

from __future__ import annotations

import inspect
import itertools
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


_ID_PREFIX = secrets.token_hex(4)
_id_counter = itertools.count(secrets.randbelow(1 << 32))


def _request_id() -> str:
    """16 hex digits, unique in this process (a counter) and, most likely, across the cluster's processes (a
    random half): cheaper than a random token per call, and request ids correlate; they guard nothing."""
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFF:08x}"


@dataclass
class OpContext:
    """One call of an operation: the services it runs on, who calls, and through what. Access control reads as
    plain calls: ``ctx.session(id)`` (the session, if the caller may see it), ``ctx.visible(records)``,
    ``ctx.owns(owner)``, ``ctx.audit(action, …)`` — all decided by aegisd/auth/access.py."""

    services: Services
    principal: Principal = field(default_factory=Principal)
    request_id: str = field(default_factory=_request_id)
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
    # the handler is a plain function (it never waits): a surface may run it at once, without a task of its own
    # (see run_now)
    sync: bool = False


REGISTRY: dict[str, Op] = {}


def op(name: str, params: type, *, result: Any, summary: str, stream: bool = False,
       permission: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise RuntimeError(f"operation {name} defined twice")
        sync = not stream and not inspect.iscoroutinefunction(fn)
        REGISTRY[name] = Op(name=name, params=params, handler=fn, summary=summary, result=result,
                            stream=stream, permission=permission, sync=sync)
        return fn
    return register


def get_op(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOperation(f"unknown operation {name!r}") from None


def decode_params(o: Op, raw: Any, *, strict: bool = True, checked: bool = False) -> Any:
    """Validate params (a dict, or None) into the op's struct. ``strict=False`` converts strings, as query
    strings need; ``checked=True``: the surface has already passed ``raw`` to core/input.check (the control
    socket checks each whole frame, params included)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{o.name}: params must be an object")
    if not checked:
        check(raw, what=f"params of {o.name}")  # whichever surface they came from (a WebSocket, Telegram...)
    try:
        params: Any = msgspec.convert(raw, o.params, strict=strict)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid params for {o.name}: {exc}") from None
    if not strict and raw:  # strings converted to numbers (query strings): "1e400", twenty-digit integers
        check(msgspec.to_builtins(params), what=f"params of {o.name}")
    return params


async def call(ctx: OpContext, name: str, raw: Any, *, strict: bool = True) -> Any:
    """Run an operation for a surface: its result in wire form (the typed result as JSON-ready builtins,
    what every surface encodes)."""
    return msgspec.to_builtins(await call_typed(ctx, name, raw, strict=strict))


async def call_typed(ctx: OpContext, name: str, raw: Any, *, strict: bool = True, checked: bool = False) -> Any:
    """Run an operation: its typed result (an instance of ``get_op(name).result``). ``checked``: see
    decode_params."""
    o = get_op(name)
    if o.stream:
        raise ValidationError(f"{name} is a streaming operation")
    params = decode_params(o, raw, strict=strict, checked=checked)
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
            if name in _AWAIT_RECORD:  # a follow --until-idle here next must see the queued prompt
                await cluster.refresh(rec.id)
            else:  # read again in the background (a read of it here is forwarded meanwhile)
                cluster.changed(rec.id)
            return msgspec.convert(answer, o.result)
    try:
        result = o.handler(ctx, params) if o.sync else await o.handler(ctx, params)
    except BaseException as exc:
        _failed(ctx, name, params, exc)
        await ctx.services.audit.stored()
        raise
    # acknowledged means stored: the audit records too (they stay queued and are stored once the store is back)
    if not await ctx.services.audit.stored():
        raise _unstored(name)
    return result


def _failed(ctx: OpContext, name: str, params: Any, exc: BaseException) -> None:
    if isinstance(exc, QuotaExceeded):
        ctx.audit("session.quota.rejected", session_id=getattr(params, "id", None),
                  detail={"operation": name, "keyId": ctx.principal.key_id, **(exc.details or {})})


def _unstored(name: str) -> StoreUnavailable:
    return StoreUnavailable(f"{name}: the audit record could not be stored (the store is unavailable); "
                            "it is kept and stored once the store is back")


# ---- at once: an operation that never waits, run by the surface's own task ----------------------------------
def runs_now(ctx: OpContext, o: Op) -> bool:
    """Whether ``run_now`` may run the operation: its handler never waits, and it is not one that another node
    of the cluster may have to run."""
    if not o.sync:
        return False
    cluster = ctx.services.cluster
    return cluster is None or not cluster.multi_node or ctx.forwarded or not _session_scoped(o)


class Done:
    """What ``run_now`` ran: the handler's typed result, or the exception it raised."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result = result
        self.error = error

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def run_now(ctx: OpContext, o: Op, raw: Any, *, strict: bool = True, checked: bool = False) -> Done:
    """``call_typed`` of an operation ``runs_now`` allows, without a checkpoint: params that are refused, or a
    caller that may not call it, raise here; the handler's outcome is returned. It is the answer once
    ``settled(ctx)`` (no audit record waits to be stored); otherwise ``await finish(ctx, o, done)``.
    ``strict``, ``checked``: see decode_params."""
    params = decode_params(o, raw, strict=strict, checked=checked)
    ctx.services.access.authorize(ctx.principal, o.name, o.permission, params)
    try:
        return Done(o.handler(ctx, params))
    except Exception as exc:  # noqa: BLE001 - handed to the caller, which raises it (unwrap) once settled
        _failed(ctx, o.name, params, exc)
        return Done(error=exc)


def settled(ctx: OpContext) -> bool:
    """No audit record waits to be stored: what ``audit.stored()`` answers at once with True."""
    return not ctx.services.audit.writer.pending


async def finish(ctx: OpContext, o: Op, done: Done) -> Any:
    """The answer of a ``run_now`` once the audit records are stored (call_typed's rule: acknowledged means
    stored)."""
    stored = await ctx.services.audit.stored()
    if done.error is None and not stored:
        raise _unstored(o.name)
    return done.unwrap()


_SCOPED: dict[str, bool] = {}
_AWAIT_RECORD = frozenset({"session.send"})  # forwarded: this node's copy of the record is read again first


def _session_scoped(o: Op) -> bool:
    """Whether the operation acts on one session named by its ``id`` param (a SessionRef)."""
    scoped = _SCOPED.get(o.name)
    if scoped is None:
        from aegisd.ops._types import SessionRef

        scoped = _SCOPED[o.name] = typing.get_type_hints(o.params, include_extras=True).get("id") == SessionRef
    return scoped


def stream(ctx: OpContext, name: str, raw: Any, *, checked: bool = False) -> AsyncGenerator[Any, None]:
    """Run a streaming operation: its items, typed (instances of ``get_op(name).result``, which the surfaces
    encode as they are). ``checked``: see decode_params."""
    o = get_op(name)
    if not o.stream:
        raise ValidationError(f"{name} is not a streaming operation")
    params = decode_params(o, raw, checked=checked)
    ctx.services.access.authorize(ctx.principal, o.name, o.permission, params)
    return o.handler(ctx, params)  # type: ignore[no-any-return]


def results() -> dict[str, Any]:
    """Each operation's result type, by name."""
    return {name: o.result for name, o in REGISTRY.items()}
