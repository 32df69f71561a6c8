"""`ag mcp`: an MCP server on stdio (JSON-RPC 2.0, one message per line) so that an agent can drive other
agents: `claude mcp add aegis -- ag mcp`. A thin client of the daemon: every tool is an operation of the
registry (aegisd/ops) called over the control socket (or HTTP with AEGIS_URL + AEGIS_AUTH_TOKEN), so the
daemon's roles, ownership, agent scope and audit apply.

Tools are generated from the registry: a tool's input schema is its operation's params struct
(msgspec.json.schema, made self-contained), its description the operation's summary. ``TOOLS`` is the only
MCP-specific metadata: which operation a tool calls, the original Aegis argument names it keeps (``sessionId``
for the operation's ``id``), the params it fixes or defaults differently, the params it does not offer, a line
of guidance for the model, and, for the few tools that compose operations, the function that does."""

from __future__ import annotations

import copy
import json
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from aegisctl.client import Client, ClientError, ConnectError

PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
SERVER_INFO = {"name": "aegis", "title": "Aegis", "version": ""}
CALL_TIMEOUT = 60.0  # seconds a daemon has to answer; operations that wait get their wait on top
VERIFY_WAIT = 3600.0

Runner = Callable[["Server", "Tool", dict[str, Any]], Any]


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


def _list_all(srv: Server, tool: Tool, p: dict[str, Any]) -> Any:
    out: list[dict[str, Any]] = []
    page = 1
    while True:  # every page (the original returned only the first 20)
        res = srv.call(tool.op, **p, page=page, limit=100)
        out.extend(_compact(s) for s in res["sessions"])
        if page >= res["pagination"]["totalPages"]:
            return {"sessions": out, "total": res["pagination"]["total"]}
        page += 1


def _status(srv: Server, tool: Tool, p: dict[str, Any]) -> Any:
    s = srv.call(tool.op, **p)
    return {**s, "health": srv.call("session.health", id=s["id"])}


def _verify(srv: Server, tool: Tool, p: dict[str, Any]) -> Any:
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
def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Replace every ``$ref`` by the definition it names (MCP clients want self-contained schemas), drop
    titles, and turn ``anyOf [X, null]`` with a null default into X: leaving a param out means the same."""
    if isinstance(node, list):
        return [_inline(x, defs, seen) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"recursive schema {name} cannot be inlined")
        return _inline({**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, defs, (*seen, name))
    out = {k: _inline(v, defs, seen) for k, v in node.items() if k not in ("title", "$defs")}
    alts = out.get("anyOf")
    if isinstance(alts, list) and {"type": "null"} in alts and "default" in out and out["default"] is None:
        rest = [a for a in alts if a != {"type": "null"}]
        del out["default"]
        out.pop("anyOf")
        out = {**rest[0], **out} if len(rest) == 1 else {**out, "anyOf": rest}
    return out


def op_schema(params: type) -> dict[str, Any]:
    """The self-contained JSON schema of an operation's params struct."""
    import msgspec

    raw = msgspec.json.schema(params)
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    return schema


def tool_schema(tool: Tool) -> dict[str, Any]:
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


# ---- the server ------------------------------------------------------------------------------------
RESOURCES = [
    {"uri": "aegis://sessions", "name": "sessions", "description": "Every session, compact", "mimeType":
     "application/json"},
    {"uri": "aegis://health", "name": "health", "description": "The daemon's health", "mimeType": "application/json"},
    {"uri": "aegis://permissions/pending", "name": "pending-permissions", "mimeType": "application/json",
     "description": "Every permission request waiting for a decision"},
]
RESOURCE_TEMPLATES = [
    {"uriTemplate": "aegis://sessions/{id}/transcript", "name": "transcript", "mimeType": "application/json",
     "description": "A session's transcript"},
    {"uriTemplate": "aegis://sessions/{id}/pane", "name": "pane", "mimeType": "text/plain",
     "description": "A plain-text rendering of a session's recent transcript"},
]
PROMPTS = [
    {"name": "delegate_task", "description": "Hand a task to a new Aegis session and follow it to the end",
     "arguments": [{"name": "task", "required": True}, {"name": "workDir", "required": True}]},
    {"name": "debug_session", "description": "Find out why a session is stuck or failed",
     "arguments": [{"name": "sessionId", "required": True}]},
]


class Server:
    def __init__(self, connect: Callable[[], Client], out: IO[str]) -> None:
        self._connect = connect
        self._local = threading.local()  # one daemon connection per worker thread
        self._out = out
        self._lock = threading.Lock()
        self.tools = {t.name: t for t in TOOLS}
        self.schemas = {t.name: tool_schema(t) for t in TOOLS}

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

    def send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps({"jsonrpc": "2.0", **msg}, separators=(",", ":")) + "\n")
            self._out.flush()

    # ---- methods ---------------------------------------------------------------------------------
    def handle(self, msg: Any) -> dict[str, Any] | None:
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
            return {"id": None, "error": {"code": -32600, "message": "invalid request"}}
        method, mid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method is None:
            return None  # a response to nothing we asked
        if mid is None:
            return None  # notifications (initialized, cancelled): nothing to answer
        fn = {"initialize": self._initialize, "ping": lambda p: {}, "tools/list": self._tools_list,
              "tools/call": self._tools_call, "resources/list": lambda p: {"resources": RESOURCES},
              "resources/templates/list": lambda p: {"resourceTemplates": RESOURCE_TEMPLATES},
              "resources/read": self._resources_read, "prompts/list": lambda p: {"prompts": PROMPTS},
              "prompts/get": self._prompts_get}.get(method)
        if fn is None:
            return {"id": mid, "error": {"code": -32601, "message": f"method not found: {method}"}}
        if not isinstance(params, dict):
            return {"id": mid, "error": {"code": -32602, "message": "params must be an object"}}
        try:
            return {"id": mid, "result": fn(params)}
        except ToolError as exc:
            return {"id": mid, "error": {"code": -32602, "message": f"{exc.code}: {exc.message}"}}
        except (KeyError, TypeError, ValueError) as exc:
            return {"id": mid, "error": {"code": -32602, "message": f"invalid params: {exc}"}}

    def _initialize(self, p: dict[str, Any]) -> dict[str, Any]:
        from importlib.metadata import version

        asked = p.get("protocolVersion")
        return {"protocolVersion": asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0],
                "capabilities": {"tools": {"listChanged": False}, "resources": {}, "prompts": {}},
                "serverInfo": {**SERVER_INFO, "version": version("aegis-py")},
                "instructions": "Aegis supervises coding-agent sessions. Create one with create_session, follow it "
                                "with wait_for_session, read it with get_transcript, and answer its permission "
                                "requests with approve_permission / reject_permission, passing the "
                                "pendingPermission.requestId you looked at (list_pending_permissions shows every "
                                "waiting request)."}

    def _tools_list(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"tools": [{"name": t.name, "description": description(t), "inputSchema": self.schemas[t.name],
                           "annotations": tool_annotations(t)} for t in TOOLS]}

    def _tools_call(self, p: dict[str, Any]) -> dict[str, Any]:
        tool = self.tools.get(p.get("name", ""))
        if tool is None:
            raise ToolError("UNKNOWN_TOOL", f"no tool {p.get('name')!r}")
        args = p.get("arguments") or {}
        if not isinstance(args, dict):
            raise ToolError("INVALID_ARGUMENTS", "arguments must be an object")
        try:
            params, decoded = op_params(tool, self.schemas[tool.name], args)
            if tool.run is not None:
                result = tool.run(self, tool, params)
            else:  # an operation that waits (session.wait, events.poll) may take its timeout to answer
                result = self.call(tool.op, waits=float(getattr(decoded, "timeoutSeconds", 0)), **params)
        except ToolError as exc:  # errors of the tool go back to the model as a result it can read
            return _tool_error(exc)
        text = json.dumps(result, indent=1, ensure_ascii=False)
        out: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
        if isinstance(result, dict):
            out["structuredContent"] = result
        return out

    def _resources_read(self, p: dict[str, Any]) -> dict[str, Any]:
        uri = p["uri"]
        if uri == "aegis://sessions":
            data: Any = _list_all(self, self.tools["list_sessions"], {})
        elif uri == "aegis://health":
            data = self.call("health")
        elif uri == "aegis://permissions/pending":
            data = self.call("permissions.pending")
        elif uri.startswith("aegis://sessions/") and uri.endswith("/transcript"):
            data = self.call("session.transcript.cursor", id=uri.split("/")[3], limit=200)
        elif uri.startswith("aegis://sessions/") and uri.endswith("/pane"):
            pane = self.call("session.pane", id=uri.split("/")[3])
            return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": pane.get("pane", "")}]}
        else:
            raise ToolError("UNKNOWN_RESOURCE", f"no resource {uri}")
        return {"contents": [{"uri": uri, "mimeType": "application/json", "text": json.dumps(data)}]}

    def _prompts_get(self, p: dict[str, Any]) -> dict[str, Any]:
        a = p.get("arguments") or {}
        if p.get("name") == "delegate_task":
            text = (f"Use the aegis tools to delegate this task to a new session in {a['workDir']}: create_session "
                    f"with the task as prompt, then wait_for_session until it needs attention; answer permission "
                    f"requests only when they are safe; finally report the result from get_transcript.\n\n"
                    f"Task: {a['task']}")
        elif p.get("name") == "debug_session":
            text = (f"Find out why Aegis session {a['sessionId']} is stuck or failed: get_status (state, pending "
                    f"permission, crash reason and stderr tail), then get_transcript, then say what to do.")
        else:
            raise ToolError("UNKNOWN_PROMPT", f"no prompt {p.get('name')!r}")
        return {"messages": [{"role": "user", "content": {"type": "text", "text": text}}]}


def _tool_error(exc: ToolError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details is not None:
        body["details"] = exc.details
    return {"content": [{"type": "text", "text": json.dumps(body, ensure_ascii=False)}], "isError": True}


def serve(connect: Callable[[], Client], stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Answer MCP requests from stdin until it closes. Each request runs in its own thread, so a long
    wait_for_session does not hold up the others."""
    inp = stdin or sys.stdin
    srv = Server(connect, stdout or sys.stdout)
    threads: list[threading.Thread] = []

    def work(msg: Any) -> None:
        reply = srv.handle(msg)
        if reply is not None:
            srv.send(reply)
    for line in inp:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            srv.send({"id": None, "error": {"code": -32700, "message": "parse error"}})
            continue
        t = threading.Thread(target=work, args=(msg,), daemon=True)
        t.start()
        threads = [x for x in threads if x.is_alive()] + [t]
    for t in threads:
        t.join(timeout=5)
    return 0
