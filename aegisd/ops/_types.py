"""Params and results that several operations share: the session view (what `GET /v1/sessions/{id}` serves),
id and empty params, pagination, the error envelope of every surface.

Results are msgspec structs whose wire form is exactly what the original's clients read: a field that is
always on the wire has no default (null included); one that is there only sometimes defaults to ``UNSET`` and
is then left out."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from aegisd.core.models import Event, QueuedPrompt, SessionRecord
from aegisd.core.states import State

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
Page = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
SessionRef = Annotated[str, msgspec.Meta(description="session id, or a unique prefix of at least 4 characters")]


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class IdParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef


class Ok(msgspec.Struct):
    ok: bool


class Pagination(msgspec.Struct):
    page: int
    limit: int
    total: int
    totalPages: int


class ErrorEnvelope(msgspec.Struct):
    error: str
    code: str
    message: str
    requestId: str
    details: Any = None


class SessionBrief(msgspec.Struct):
    id: str
    name: str
    status: str
    createdAt: int


class ActionHint(msgspec.Struct):
    method: str
    url: str
    description: str
    body: dict[str, Any] | UnsetType = UNSET  # the body that decides the pending request and no other


class PromptDelivery(msgspec.Struct):
    delivered: bool
    attempts: int
    afterEventId: int | UnsetType = UNSET  # a reused session: its events after this one are the new prompt's
    queued: bool | UnsetType = UNSET


class SessionView(SessionRecord, kw_only=True):
    """A session as the API serves it: the record (without the daemon's read offset) and a label; approve and
    reject hints while a permission request waits."""

    readOffset: int | UnsetType = UNSET  # type: ignore[assignment]  # the daemon's own (session.read): never on the wire
    promptQueue: list[QueuedPrompt] | UnsetType = UNSET  # type: ignore[assignment]  # the daemon's own: never on the wire
    label: str = ""
    actionHints: dict[str, ActionHint] | UnsetType = UNSET


class CreatedSession(SessionView, kw_only=True):
    reused: bool
    promptDelivery: PromptDelivery


def session_view(rec: SessionRecord, base_url: str = "", cls: Any = SessionView, **extra: Any) -> Any:
    """The session as the API serves it (``cls``: a subclass of :class:`SessionView`, with its ``extra``)."""
    return _view(cls, rec, base_url, **extra)


_HIDDEN = ("readOffset", "promptQueue")  # the record's fields a view leaves out (UNSET)
_PICKERS: dict[type, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {}


def _picker(cls: type) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """From a record's fields as a tuple (msgspec.structs.astuple), the view's positional arguments: the
    record's fields but the hidden ones, in the order ``cls`` takes them (its own fields are keyword-only and
    come after)."""
    pick = _PICKERS.get(cls)
    if pick is None:
        names = SessionRecord.__struct_fields__
        shown = [n for n in names if n not in _HIDDEN]
        fields: tuple[str, ...] = cls.__struct_fields__  # type: ignore[attr-defined]
        if fields[:len(shown)] != tuple(shown):
            raise TypeError(f"{cls.__name__}: the record's fields must come first, in the record's order")
        pick = _PICKERS[cls] = operator.itemgetter(*(names.index(n) for n in shown))
    return pick


def _view(cls: Any, rec: SessionRecord, base_url: str, overrides: dict[str, Any] | None = None,
          **extra: Any) -> Any:
    hints: dict[str, ActionHint] | UnsetType = UNSET
    if rec.status == State.PERMISSION_PROMPT:
        base = f"{base_url}/v1/sessions/{rec.id}"
        body = {"requestId": rec.pendingPermission.requestId} if rec.pendingPermission is not None else UNSET
        hints = {"approve": ActionHint("POST", f"{base}/approve", "Approve the pending request", body),
                 "reject": ActionHint("POST", f"{base}/reject", "Reject the pending request", body)}
    if not overrides:  # positional, from a tuple: a quarter of the cost of keywords from a dict
        return cls(*_picker(cls)(msgspec.structs.astuple(rec)), label=rec.name, actionHints=hints, **extra)
    fields = msgspec.structs.asdict(rec)
    for name in _HIDDEN:
        fields.pop(name, None)
    fields.update(overrides)
    return cls(**fields, label=rec.name, actionHints=hints, **extra)


def created_view(rec: SessionRecord, base_url: str, *, reused: bool, delivery: dict[str, Any],
                 cls: Any = CreatedSession, overrides: dict[str, Any] | None = None, **extra: Any) -> Any:
    """A session just created (or reused), with how its first prompt was delivered."""
    return _view(cls, rec, base_url, overrides, reused=reused, promptDelivery=PromptDelivery(**delivery), **extra)


EventFrame = Event  # one event as streams and polls deliver it: {id, event, sessionId, timestamp, data?}


def session_busy(runners: Mapping[str, Any], rec: SessionRecord) -> bool:
    """A turn in flight or queued. The runner knows, for a session this daemon runs; for another node's session
    (aegisd/cluster) its record says."""
    runner = runners.get(rec.id)
    if runner is not None:
        return bool(runner.busy)
    if rec.node is None:
        return False
    return rec.status in (State.RUNNING, State.STALLED, State.PERMISSION_PROMPT) or bool(rec.promptQueue)
