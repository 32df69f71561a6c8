"""Typed records shared by the daemon, the store, the operations and their surfaces (msgspec structs).

Field names are camelCase on the wire, as in the original Aegis `/v1` API."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from aegisd.core.states import State

SCHEMA_VERSION = 1  # version of the on-disk records; bump with a migration in store/


def now_ms() -> int:
    return int(time.time() * 1000)


class PermissionOption(msgspec.Struct, rename="camel", omit_defaults=True):
    optionId: str
    name: str = ""
    kind: str = ""


class PendingPermission(msgspec.Struct, omit_defaults=True):
    """What the agent is waiting for a decision on (status ``permission_prompt``)."""

    requestId: str
    toolTitle: str
    toolKind: str | None = None
    toolCallId: str | None = None
    rawInput: Any = None
    options: list[PermissionOption] = []
    since: int = 0
    # compatibility with the original's field names
    toolName: str | None = None
    prompt: str | None = None
    startedAt: int | None = None


class TokenUsage(msgspec.Struct, omit_defaults=False):
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadTokens: int = 0
    cacheCreationTokens: int = 0
    totalTokens: int = 0
    costUsd: float = 0.0


class ContextUsage(msgspec.Struct, omit_defaults=True):
    used: int = 0
    size: int = 0
    cost: Any = None


class CrashInfo(msgspec.Struct, omit_defaults=True):
    reason: str
    exitCode: int | None = None
    signal: int | None = None
    stderrTail: str | None = None


class LastError(msgspec.Struct):
    """The last thing that went wrong with the agent, as one line with the fix (see sessions/_failures.py)."""

    kind: str  # auth | rate_limit | model | agent_missing | agent | interrupted (a restart or a node lost mid-turn)
    message: str
    at: int


class QueuedPrompt(msgspec.Struct, omit_defaults=True):
    """A prompt acknowledged to its sender and not done with yet, persisted with its session
    (``SessionRecord.promptQueue``): waiting for its turn, or — ``entryId`` set — being delivered: its user entry
    ``entryId`` is (or is about to be) in the transcript, and from then on it is never sent again."""

    id: str
    text: str
    at: int  # when it was acknowledged (epoch ms)
    entryId: int | None = None


class SessionRecord(msgspec.Struct):
    """One session as persisted and as served by `GET /v1/sessions/{id}`."""

    id: str
    workDir: str
    status: State = State.PENDING
    name: str = ""
    agent: str = "claude"
    permissionMode: str = "default"
    model: str | None = None  # the model the agent reports it uses (before it has started: the one asked for)
    requestedModel: str | None = None  # the model asked for on create (None: the agent's default)
    models: list[str] = []  # the models the agent offers (empty: it offers no choice)
    stallThresholdMs: int = 120_000
    createdAt: int = 0
    lastActivity: int = 0
    endedAt: int | None = None
    acpSessionId: str | None = None
    agentInfo: dict[str, Any] | None = None
    agentModes: list[str] = []
    currentMode: str | None = None
    loadSupported: bool = False
    forkSupported: bool = False
    pendingPermission: PendingPermission | None = None
    crash: CrashInfo | None = None
    lastError: LastError | None = None  # cleared by the next turn that ends well
    endReason: str | None = None
    stopReason: str | None = None
    turns: int = 0
    transcriptCount: int = 0
    # the prompts acknowledged and not yet delivered, oldest first (plus, first, the one being delivered): saved
    # before a send is answered, so a restart replays them (the daemon's own: never on the wire)
    promptQueue: list[QueuedPrompt] = []
    readOffset: int = 0
    tokenUsage: TokenUsage = msgspec.field(default_factory=TokenUsage)
    contextUsage: ContextUsage | None = None
    title: str | None = None
    availableCommands: list[dict[str, Any]] = []
    parentId: str | None = None
    forkedFrom: str | None = None
    forkMethod: str | None = None  # "acp" (session/fork in the agent) | "transcript" (seeded first prompt)
    ownerKeyId: str | None = None
    # the session whose agent created this one (over `ag mcp`, the socket or loopback HTTP); that agent may act
    # on it. Set by the daemon only, never by a request.
    creatorSessionId: str | None = None
    permissionProfile: dict[str, Any] | None = None
    permissionPolicy: list[dict[str, Any]] | None = None  # the original's legacy rules, as sent
    mcpServers: list[str] = []  # names: "aegis" (built in) or keys of the config's mcpServers
    pid: int | None = None
    node: str | None = None  # the id of the node running it (aegisd/cluster; one daemon: this daemon's id)
    schemaVersion: int = SCHEMA_VERSION


class TranscriptEntry(msgspec.Struct, omit_defaults=True):
    id: int
    role: str  # user | assistant | system
    contentType: str  # text | thinking | tool_use | tool_result | tool_error | permission_request | plan | usage
    text: str
    timestamp: int
    toolName: str | None = None
    toolUseId: str | None = None


# dict=True: the envelope carries its typed event too (aegisd.core.events.payload), never encoded
class Event(msgspec.Struct, omit_defaults=True, dict=True):
    """One event on the bus. ``id`` is monotonic across the daemon and survives restarts; ``event`` names its
    kind and ``data`` holds that kind's fields."""

    id: int
    event: str  # a kind's NAME in aegisd/core/events.py: created | status | message | permission.requested | ...
    sessionId: str
    timestamp: int
    data: dict[str, Any] = {}
