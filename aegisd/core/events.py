"""Typed events: one struct per kind of thing that happens to a session, each with its own name.

The bus (aegisd/bus) publishes these; what it keeps, persists and streams is the envelope
:class:`aegisd.core.models.Event` (``id``, ``event`` = the kind's ``NAME``, ``sessionId``, ``timestamp``, ``data``
= the kind's fields). Consumers never sniff ``data``'s keys: they take :func:`payload` of an envelope and
``match`` on its type::

    match payload(ev):
        case PermissionRequested(request=req): ...
        case PermissionDecided(auto=True): ...

Names on the control socket and in the store are the ``NAME``s below. SSE keeps the original Aegis wire names
and payloads (``approval`` for both permission kinds): aegisd/surfaces/http/_sse.py maps them.

Events persisted before the permission kinds were split carry the name ``approval``; :func:`decode` reads them
as the kind they were (the only place that tells the two apart by their keys)."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from aegisd.core.models import Event, PendingPermission, SessionRecord, TranscriptEntry
from aegisd.core.states import State


class SessionEvent(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Base of every event kind. ``data`` on the wire is the struct's fields (:meth:`to_data`)."""

    NAME: ClassVar[str] = ""

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SessionEvent:
        out: SessionEvent = msgspec.convert(data, cls, strict=False)
        return out


# ---- the session's life ------------------------------------------------------------------------------
class Created(SessionEvent, kw_only=True):
    """A session was created; ``data`` is its record."""

    NAME: ClassVar[str] = "created"
    record: SessionRecord

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self.record)
        out.pop("promptQueue", None)  # the daemon's own, as in the API's view of a session
        return out

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Created:
        return cls(record=msgspec.convert(data, SessionRecord, strict=False))


class StatusChanged(SessionEvent, kw_only=True):
    NAME: ClassVar[str] = "status"
    status: State
    previous: State
    detail: str | None = None


class Stall(SessionEvent, kw_only=True):
    """The turn shows no agent activity for the stall threshold (published after the ``stalled`` status)."""

    NAME: ClassVar[str] = "stall"
    stallType: str
    detail: str


class Ended(SessionEvent, kw_only=True):
    """The session reached a terminal status; a crash adds its exit code or signal (and its reason replaces
    the short one)."""

    NAME: ClassVar[str] = "ended"
    reason: str
    status: State
    exitCode: int | None = None
    signal: int | None = None


# ---- the agent's output ------------------------------------------------------------------------------
class Message(SessionEvent, kw_only=True):
    """A transcript entry was appended; ``data`` is the entry."""

    NAME: ClassVar[str] = "message"
    entry: TranscriptEntry

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self.entry)
        return out

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Message:
        return cls(entry=msgspec.convert(data, TranscriptEntry, strict=False))


class Chunk(SessionEvent, kw_only=True):
    """A piece of the agent's words or thoughts as they stream (not in the transcript until the turn's text is)."""

    NAME: ClassVar[str] = "chunk"
    role: str
    contentType: str  # text | thinking
    text: str


class Tool(SessionEvent, kw_only=True):
    """A tool call started or changed (fields the agent did not send are null)."""

    NAME: ClassVar[str] = "tool"
    toolUseId: str
    title: str | None
    kind: str | None
    status: str | None


class Turn(SessionEvent, kw_only=True):
    """A prompt turn ended."""

    NAME: ClassVar[str] = "turn"
    stopReason: str | None
    usage: dict[str, Any] | None
    turn: int
    error: str | None = None
    errorKind: str | None = None


# ---- permissions -------------------------------------------------------------------------------------
class PermissionRequested(SessionEvent, kw_only=True):
    """The agent waits for a decision on ``request`` (it became, or queued behind, the pending one)."""

    NAME: ClassVar[str] = "permission.requested"
    request: PendingPermission

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self.request)
        return out

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> PermissionRequested:
        return cls(request=msgspec.convert(data, PendingPermission, strict=False))


class PermissionDecided(SessionEvent, kw_only=True):
    """A permission request was answered: automatically (``auto``: by the session's mode or its permission
    profile, named in ``by``; ``toolTitle`` says what) or by a person or client (``requestId`` says which
    request; ``by`` who, when known)."""

    NAME: ClassVar[str] = "permission.decided"
    auto: bool
    decision: str  # allow | deny
    optionId: str
    requestId: str | None = None
    toolTitle: str | None = None
    by: str | None = None


# ---- features ----------------------------------------------------------------------------------------
class Verification(SessionEvent, kw_only=True):
    """The project's checks for a session: ``running`` (steps: their names), then ``passed`` or ``failed``
    (steps: their results)."""

    NAME: ClassVar[str] = "verification"
    status: str
    steps: list[Any]
    ok: bool | None = None
    summary: str | None = None
    totalDurationMs: int | None = None


class Pipeline(SessionEvent, kw_only=True):
    """A pipeline's state changed (published under the pipeline's id)."""

    NAME: ClassVar[str] = "pipeline"
    status: str
    currentStage: Any
    stages: dict[str, str]


# ---- streams -----------------------------------------------------------------------------------------
class Overflow(SessionEvent, kw_only=True):
    """Not on the bus: a follower that fell behind skipped events (control socket and /v1/rpc streams)."""

    NAME: ClassVar[str] = "overflow"
    reason: str
    resumedAfter: int | None
    firstAvailable: int | None


class Unknown(SessionEvent, kw_only=True):
    """An event of a kind this daemon does not know (a newer daemon's, read back from a shared store)."""

    NAME: ClassVar[str] = ""
    name: str
    data: dict[str, Any]

    def to_data(self) -> dict[str, Any]:
        return dict(self.data)


KINDS: dict[str, type[SessionEvent]] = {k.NAME: k for k in (
    Created, StatusChanged, Stall, Ended, Message, Chunk, Tool, Turn, PermissionRequested, PermissionDecided,
    Verification, Pipeline, Overflow)}

LEGACY_APPROVAL = "approval"  # the one name both permission kinds had before they were split


def name_of(event: SessionEvent) -> str:
    return event.name if isinstance(event, Unknown) else event.NAME


def decode(name: str, data: dict[str, Any]) -> SessionEvent:
    """The typed event of an envelope's name and data."""
    kind = KINDS.get(name)
    if kind is None and name == LEGACY_APPROVAL:
        kind = PermissionDecided if "decision" in data else PermissionRequested
    if kind is None:
        return Unknown(name=name, data=data)
    try:
        return kind.from_data(data)
    except msgspec.ValidationError:
        return Unknown(name=name, data=data)


_PAYLOAD = "_payload"


def envelope(id: int, session_id: str, timestamp: int, event: SessionEvent) -> Event:
    """The bus's envelope of ``event``, carrying the typed event itself (see :func:`payload`)."""
    ev = Event(id=id, event=name_of(event), sessionId=session_id, timestamp=timestamp, data=event.to_data())
    setattr(ev, _PAYLOAD, event)
    return ev


def payload(ev: Event) -> SessionEvent:
    """The typed event of an envelope: the one published, or decoded once from what the store returned."""
    got = ev.__dict__.get(_PAYLOAD)
    if got is None:
        got = decode(ev.event, ev.data)
        setattr(ev, _PAYLOAD, got)
    return got  # type: ignore[no-any-return]


__all__ = [
    "KINDS", "Chunk", "Created", "Ended", "Message", "Overflow", "PermissionDecided", "PermissionRequested",
    "Pipeline", "SessionEvent", "Stall", "StatusChanged", "Tool", "Turn", "Unknown", "Verification", "decode",
    "envelope", "name_of", "payload",
]
