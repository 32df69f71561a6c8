"""ACP v1 wire types (msgspec). Only what the client side needs; unknown fields are tolerated, since agents
add `_meta` and newer fields freely. Keys are camelCase; discriminators snake_case."""

from __future__ import annotations

from typing import Any, Union

import msgspec

PROTOCOL_VERSION = 1

# JSON-RPC error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AUTH_REQUIRED = -32000
RESOURCE_NOT_FOUND = -32002
REQUEST_CANCELLED = -32800


class Message(msgspec.Struct, omit_defaults=True):
    """Any JSON-RPC 2.0 message; which one it is follows from the fields present."""

    jsonrpc: str = "2.0"
    id: int | str | None = None
    method: str | None = None
    params: msgspec.Raw = msgspec.Raw()  # empty when absent
    result: msgspec.Raw = msgspec.Raw()
    error: RpcError | None = None


class RpcError(msgspec.Struct, omit_defaults=True):
    code: int
    message: str = ""
    data: Any = None


# ---- client -> agent ---------------------------------------------------------------------------

class Implementation(msgspec.Struct, omit_defaults=True):
    name: str
    version: str = ""
    title: str | None = None


class PromptCapabilities(msgspec.Struct, omit_defaults=True):
    image: bool = False
    audio: bool = False
    embeddedContext: bool = False


class AgentCapabilities(msgspec.Struct, omit_defaults=True):
    loadSession: bool = False
    promptCapabilities: PromptCapabilities = msgspec.field(default_factory=PromptCapabilities)
    sessionCapabilities: dict[str, Any] = {}
    mcpCapabilities: dict[str, Any] = {}


class InitializeResult(msgspec.Struct, omit_defaults=True):
    protocolVersion: int
    agentCapabilities: AgentCapabilities = msgspec.field(default_factory=AgentCapabilities)
    agentInfo: Implementation | None = None
    authMethods: list[dict[str, Any]] = []


class SessionMode(msgspec.Struct, omit_defaults=True):
    id: str
    name: str = ""
    description: str | None = None


class SessionModeState(msgspec.Struct, omit_defaults=True):
    currentModeId: str
    availableModes: list[SessionMode] = []


class NewSessionResult(msgspec.Struct, omit_defaults=True):
    sessionId: str
    modes: SessionModeState | None = None
    models: Any = None
    configOptions: Any = None


class LoadSessionResult(msgspec.Struct, omit_defaults=True):
    modes: SessionModeState | None = None
    models: Any = None
    configOptions: Any = None


class PromptResult(msgspec.Struct, omit_defaults=True):
    stopReason: str
    usage: dict[str, Any] | None = None


# ---- agent -> client ---------------------------------------------------------------------------

class PermissionOption(msgspec.Struct, omit_defaults=True):
    optionId: str
    name: str = ""
    kind: str = ""


class ToolCallRef(msgspec.Struct, omit_defaults=True):
    toolCallId: str = ""
    title: str | None = None
    kind: str | None = None
    status: str | None = None
    rawInput: Any = None
    content: Any = None
    locations: Any = None
    name: str | None = None


class RequestPermissionParams(msgspec.Struct, omit_defaults=True):
    sessionId: str
    toolCall: ToolCallRef
    options: list[PermissionOption]


class SessionNotification(msgspec.Struct, omit_defaults=True):
    sessionId: str
    update: msgspec.Raw


# ---- session/update variants (tagged by `sessionUpdate`) ---------------------------------------

class _Update(msgspec.Struct, tag_field="sessionUpdate", omit_defaults=True):
    pass


class UserMessageChunk(_Update, tag="user_message_chunk"):
    content: dict[str, Any] = {}
    messageId: str | None = None


class AgentMessageChunk(_Update, tag="agent_message_chunk"):
    content: dict[str, Any] = {}
    messageId: str | None = None


class AgentThoughtChunk(_Update, tag="agent_thought_chunk"):
    content: dict[str, Any] = {}
    messageId: str | None = None


class ToolCall(_Update, tag="tool_call"):
    toolCallId: str = ""
    title: str = ""
    kind: str | None = None
    status: str | None = None
    content: list[dict[str, Any]] | None = None
    locations: list[dict[str, Any]] | None = None
    rawInput: Any = None
    rawOutput: Any = None


class ToolCallUpdate(_Update, tag="tool_call_update"):
    toolCallId: str = ""
    title: str | None = None
    kind: str | None = None
    status: str | None = None
    content: list[dict[str, Any]] | None = None
    locations: list[dict[str, Any]] | None = None
    rawInput: Any = None
    rawOutput: Any = None


class Plan(_Update, tag="plan"):
    entries: list[dict[str, Any]] = []


class AvailableCommandsUpdate(_Update, tag="available_commands_update"):
    availableCommands: list[dict[str, Any]] = []


class CurrentModeUpdate(_Update, tag="current_mode_update"):
    currentModeId: str = ""


class ConfigOptionUpdate(_Update, tag="config_option_update"):
    configOptions: Any = None


class SessionInfoUpdate(_Update, tag="session_info_update"):
    title: str | None = None
    updatedAt: str | None = None


class UsageUpdate(_Update, tag="usage_update"):
    used: int = 0
    size: int = 0
    cost: dict[str, Any] | None = None


SessionUpdate = Union[UserMessageChunk, AgentMessageChunk, AgentThoughtChunk, ToolCall, ToolCallUpdate, Plan,
                      AvailableCommandsUpdate, CurrentModeUpdate, ConfigOptionUpdate, SessionInfoUpdate,
                      UsageUpdate]


class UnknownUpdate(msgspec.Struct):
    """A variant this client does not know (newer agents): kept, never fatal."""

    kind: str
    raw: dict[str, Any]


_update_decoder = msgspec.json.Decoder(SessionUpdate)  # type: ignore[arg-type]


def decode_update(raw: msgspec.Raw | bytes) -> SessionUpdate | UnknownUpdate:
    try:
        return _update_decoder.decode(raw)
    except msgspec.ValidationError:
        data = msgspec.json.decode(raw)
        kind = data.get("sessionUpdate", "?") if isinstance(data, dict) else "?"
        return UnknownUpdate(kind=str(kind), raw=data if isinstance(data, dict) else {})


def content_text(block: dict[str, Any] | None) -> str:
    """Readable text of an ACP ContentBlock."""
    if not block:
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "resource_link":
        return f"[{block.get('name') or block.get('uri', '')}]({block.get('uri', '')})"
    if kind == "resource":
        res = block.get("resource") or {}
        return str(res.get("text") or f"[resource {res.get('uri', '')}]")
    if kind in ("image", "audio"):
        return f"[{kind} {block.get('mimeType', '')}]"
    return ""
