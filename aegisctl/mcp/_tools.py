"""The MCP tools of `ag mcp`: each is an operation of the registry (aegisd/ops), called on the daemon.

A tool's input schema is its operation's params struct (msgspec.json.schema, made self-contained), its description
the operation's summary. ``TOOLS`` is the only MCP-specific metadata: which operation a tool calls, the original
Aegis argument names it keeps (``sessionId`` for the operation's ``id``), the params it fixes or defaults
differently, the params it does not offer, a line of guidance for the model, and, for the few tools that compose
operations, the function that does. Arguments are checked by decoding them into the operation's own struct (the
daemon checks them again). Nothing here knows MCP's wire: the SDK does (``_server``)."""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aegisctl.client import Client, ClientError, ConnectError

CALL_TIMEOUT = 60.0  # seconds a daemon has to answer; operations that wait get their wait on top
VERIFY_WAIT = 3600.0

Runner = Callable[["Daemon", "Tool", dict[str, Any]], Any]


@dataclass(frozen=True)
class Tool:
    """One MCP tool over one operation. ``rename`` maps the tool's argument names to the operation's param names
    (the original's ``sessionId`` for ``id``); ``fixed`` params are always sent and not offered; ``defaults``
    replace the operation's default; ``hide`` params are not offered (compatibility fields a model has no use
    for); ``hint`` is appended to the operation's summary; ``run`` composes operations (default: call ``op``)."""

    name: str
    op: str
    rename: Mapping[str, str] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    hide: tuple[str, ...] = ()
    hint: str = ""
    run: Runner | None = None


# ---- the tools that compose operations -------------------------------------------------------------
def _compact(s: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "name", "status", "workDir", "agent", "model", "permissionMode", "createdAt", "lastActivity",
            "turns", "stopReason", "parentId", "pendingPermission", "crash", "lastError")
    return {k: s.get(k) for k in keep if s.get(k) is not None}


def _list_all(srv: Daemon, tool: Tool, p: dict[str, Any]) -> Any:
    out: list[dict[str, Any]] = []
    page = 1
    while True:  # every page (the original returned only the first 20)
        res = srv.call(tool.op, **p, page=page, limit=100)
        out.extend(_compact(s) for s in res["sessions"])
        if page >= res["pagination"]["totalPages"]:
            return {"sessions": out, "total": res["pagination"]["total"]}
        page += 1


def _status(srv: Daemon, tool: Tool, p: dict[str, Any]) -> Any:
    s = srv.call(tool.op, **p)
    return {**s, "health": srv.call("session.health", id=s["id"])}


def _verify(srv: Daemon, tool: Tool, p: dict[str, Any]) -> Any:
    """A failed verification is an answer, not a tool error: the caller wants the steps and their output."""
    try:
        return srv.call(tool.op, waits=VERIFY_WAIT, **p)  # the project's tests may take a while
    except ToolError as exc:
        if exc.code == "VERIFICATION_FAILED" and isinstance(exc.details, dict):
            return exc.details
        raise


SID = {"sessionId": "id"}
REQUEST = ("Pass the requestId of the request you looked at (pendingPermission.requestId from get_status, "
           "wait_for_session or list_pending_permissions): if another one is pending by then, nothing is decided.")

TOOLS: tuple[Tool, ...] = (
    # the original Aegis tools with their names and arguments (not its tmux-only send_bash and get_swarm), and
    # wait_for_session and verify_session
    Tool("list_sessions", "session.list", hide=("page", "limit", "pageSize"), run=_list_all,
         hint="Every page, each session in brief. status: a state, or active / ended."),
    Tool("get_status", "session.get", SID, run=_status,
         hint="With the session's health: whether its agent runs, queued prompts, its stderr tail."),
    Tool("get_transcript", "session.transcript.cursor", SID,
         hint="Moves no read cursor; page back with before_id set to the oldest_id you got."),
    Tool("wait_for_session", "session.wait", SID,
         hint="Use it instead of polling get_status; then read get_transcript or answer the pending request."),
    Tool("server_health", "health"),
    Tool("capture_pane", "session.pane", SID),
    Tool("get_session_metrics", "session.metrics", SID),
    Tool("get_session_summary", "session.summary", SID),
    Tool("get_session_latency", "session.latency", SID),
    Tool("list_pipelines", "pipeline.list"),
    Tool("state_get", "memory.get"),
    Tool("state_set", "memory.set"),
    Tool("state_delete", "memory.delete"),
    Tool("send_message", "session.send", SID),
    Tool("create_session", "session.create", defaults={"reuse": False},
         hide=("label", "env", "claudeCommand", "resumeSessionId", "prd"),
         hint="Then follow it with wait_for_session."),
    Tool("approve_permission", "session.approve", SID, hint=REQUEST),
    Tool("reject_permission", "session.reject", SID, hint=REQUEST),
    Tool("interrupt_session", "session.interrupt", SID),
    Tool("escape_session", "session.interrupt", SID, hint="The original's Escape key: the same as interrupt_session."),
    Tool("send_command", "session.command", SID, hint="list_commands shows the commands the agent offers."),
    Tool("batch_create_sessions", "sessions.batch_create"),
    Tool("create_pipeline", "pipeline.create", {"steps": "stages"}, defaults={"sequential": True},
         hint="steps are the pipeline's stages; here they run one after another unless they say dependsOn or "
              "sequential is false. Follow it with get_pipeline."),
    Tool("verify_session", "session.verify", SID, run=_verify,
         hint="A failed check is a result with ok: false and each step's output (not a tool error): send the "
              "failure to the session to fix."),
    Tool("kill_session", "session.kill", SID),
    # ACP-native control
    Tool("close_session", "session.close", SID),
    Tool("set_permission_mode", "session.set_mode", SID),
    Tool("set_model", "session.set_model", SID),
    Tool("fork_session", "session.fork", SID),
    Tool("list_children", "session.children", SID),
    Tool("read_messages", "session.read", SID, hint="Only what is new since the previous read_messages."),
    Tool("list_commands", "session.commands", SID),
    Tool("list_pending_permissions", "permissions.pending",
         hint="Answer each with approve_permission or reject_permission and its sessionId and requestId."),
    Tool("follow_events", "events.poll",
         hint="Pass the lastId you got as afterId next time to continue where you stopped."),
    Tool("get_permission_profile", "session.permission_profile.get", SID),
    Tool("set_permission_profile", "session.permission_profile.set", SID, hide=("profile",),
         hint="rules: [{tool: '*' | a tool kind (read, edit, execute...) | a tool name, behavior: allow | deny | "
              "ask, pattern?: a glob on the command or path}]; defaultBehavior: allow | deny | ask | mode."),
    # pipelines, templates, the memory bridge, the daemon
    Tool("get_pipeline", "pipeline.get", {"pipelineId": "id"}),
    Tool("list_templates", "template.list"),
    Tool("get_template", "template.get", {"templateId": "id"}),
    Tool("create_template", "template.create", hide=("claudeCommand", "env"),
         hint="Use it with create_session's templateId."),
    Tool("delete_template", "template.delete", {"templateId": "id"}),
    Tool("state_list", "memory.list"),
    Tool("server_info", "hello", hint="Inside a session, session names the session this caller is scoped to."),
    Tool("whoami", "auth.whoami", hint="What these tools may do: as a session's agent, only its own session tree."),
)


# ---- schemas from the registry ---------------------------------------------------------------------
def tool_schema(tool: Tool) -> dict[str, Any]:
    from aegisctl._catalogue import op_schema
    from aegisd.ops import get_op

    base = op_schema(get_op(tool.op).params)
    to_tool = {v: k for k, v in tool.rename.items()}
    drop = set(tool.hide) | set(tool.fixed)
    props: dict[str, Any] = {}
    for name, prop in base.get("properties", {}).items():
        if name in drop:
            continue
        prop = copy.deepcopy(prop)
        if name in tool.defaults:
            prop["default"] = tool.defaults[name]
        props[to_tool.get(name, name)] = prop
    required = [to_tool.get(n, n) for n in base.get("required", []) if n not in drop]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def description(tool: Tool) -> str:
    from aegisd.ops import get_op

    summary = get_op(tool.op).summary.rstrip(".") + "."
    return f"{summary}\n{tool.hint}" if tool.hint else summary


def tool_annotations(tool: Tool) -> dict[str, Any]:
    from aegisd.ops import get_op

    o = get_op(tool.op)
    return {"readOnlyHint": o.permission in (None, "public"),
            "destructiveHint": o.permission == "kill" or o.name.endswith(".delete")}


# ---- arguments -------------------------------------------------------------------------------------
class ToolError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def op_params(tool: Tool, schema: dict[str, Any], args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The operation's params for these tool arguments, and them decoded into the operation's own struct (the
    daemon checks them again); ToolError INVALID_ARGUMENTS names the tool's arguments, not the operation's."""
    from aegisd.core.errors import ValidationError
    from aegisd.ops import decode_params, get_op

    props = schema["properties"]
    unknown = [a for a in args if a not in props]
    if unknown:
        raise ToolError("INVALID_ARGUMENTS",
                        f"unknown argument {unknown[0]!r} (expected: {', '.join(props) or 'none'})")
    params = {**tool.defaults, **{tool.rename.get(k, k): v for k, v in args.items()}, **tool.fixed}
    try:
        decoded = decode_params(get_op(tool.op), params)
    except ValidationError as exc:
        message = exc.message.split(": ", 1)[-1]  # without "invalid params for <op>"
        for arg, param in tool.rename.items():  # `$.id` / field `id` -> the tool's name for it
            message = re.sub(rf"`(\$\.)?{re.escape(param)}(?=[`.\[])", rf"`\g<1>{arg}", message)
        raise ToolError("INVALID_ARGUMENTS", message) from None
    return params, decoded


# ---- calling the daemon ----------------------------------------------------------------------------
class Daemon:
    """The daemon, as the tools call it: one connection per worker thread (requests run concurrently), opened
    again after the daemon went away."""

    def __init__(self, connect: Callable[[], Client]) -> None:
        self._connect = connect
        self._local = threading.local()

    def call(self, op: str, *, waits: float = 0.0, **params: Any) -> Any:
        """One operation; ``waits``: seconds the operation itself may take on top of the usual answer time."""
        client: Client | None = getattr(self._local, "client", None)
        try:
            if client is None:
                client = self._local.client = self._connect()
            client.timeout = CALL_TIMEOUT + waits
            return client.call(op, **params)
        except ConnectError as exc:
            if client is not None:
                client.close()
            self._local.client = None  # the daemon may come back: connect again next time
            raise ToolError("SERVER_UNREACHABLE", f"aegisd is not reachable: {exc.message}") from None
        except ClientError as exc:
            raise ToolError(exc.code, exc.message, exc.details) from None


BY_NAME = {t.name: t for t in TOOLS}


def call_tool(daemon: Daemon, tool: Tool, schema: dict[str, Any], args: dict[str, Any]) -> tuple[Any, bool]:
    """Run a tool (blocking): its result, or the error body the model reads, and whether it is an error."""
    try:
        params, decoded = op_params(tool, schema, args)
        if tool.run is not None:
            return tool.run(daemon, tool, params), False
        # an operation that waits (session.wait, events.poll) may take its timeout to answer
        return daemon.call(tool.op, waits=float(getattr(decoded, "timeoutSeconds", 0)), **params), False
    except ToolError as exc:  # errors of the tool go back to the model as a result it can read
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details is not None:
            body["details"] = exc.details
        return body, True
