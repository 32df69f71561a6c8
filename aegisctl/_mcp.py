"""`ag mcp`: an MCP server on stdio (JSON-RPC 2.0, one message per line) so that an agent can drive other
agents: `claude mcp add aegis -- ag mcp`. A thin client of the daemon: every tool is one or two operations
over the control socket (or HTTP with AEGIS_URL + AEGIS_AUTH_TOKEN), so the daemon's roles, ownership and
audit apply. Tools of the original's set keep their names and arguments; tmux-only ones are left out, and
`wait_for_session` is added so a driving agent need not poll."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from .client import Client, ClientError, ConnectError

PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
SERVER_INFO = {"name": "aegis", "title": "Aegis", "version": ""}
TERMINAL = ("completed", "killed", "crashed")

S = {"type": "string"}
SID = {"sessionId": {"type": "string", "description": "session id, or a unique prefix of at least 4 characters"}}
REQ = {"requestId": {"type": "string", "minLength": 1, "description": "the pending request this decides "
                     "(pendingPermission.requestId); a mismatch is an error PERMISSION_REQUEST_MISMATCH"}}


def _schema(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


class Tool:
    def __init__(self, name: str, description: str, schema: dict[str, Any],
                 run: Callable[[Server, dict[str, Any]], Any], *, read_only: bool = True,
                 destructive: bool = False) -> None:
        self.name, self.description, self.schema, self.run = name, description, schema, run
        self.annotations = {"readOnlyHint": read_only, "destructiveHint": destructive}


def _compact(s: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "name", "status", "workDir", "agent", "permissionMode", "createdAt", "lastActivity", "turns",
            "stopReason", "parentId", "pendingPermission", "crash")
    return {k: s.get(k) for k in keep if s.get(k) is not None}


def _list(srv: Server, a: dict[str, Any]) -> Any:
    out: list[dict[str, Any]] = []
    page = 1
    while True:  # every page (the original returned only the first 20)
        res = srv.call("session.list", status=a.get("status"), workDir=a.get("workDir"), page=page, limit=100)
        out.extend(_compact(s) for s in res["sessions"])
        if page >= res["pagination"]["totalPages"]:
            return {"sessions": out, "total": res["pagination"]["total"]}
        page += 1


def _status(srv: Server, a: dict[str, Any]) -> Any:
    s = srv.call("session.get", id=a["sessionId"])
    health = srv.call("session.health", id=s["id"])
    return {**_compact(s), "health": health}


def _wait(srv: Server, a: dict[str, Any]) -> Any:
    """Until the session needs attention: idle (turn over, nothing queued), waiting for a permission decision,
    or ended; or until the timeout."""
    timeout = min(max(float(a.get("timeoutSeconds", 300)), 0.0), 3600.0)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        s = srv.call("session.get", id=a["sessionId"])
        h = srv.call("session.health", id=s["id"]) if s["status"] == "idle" else {}
        if s["status"] in TERMINAL or s["status"] == "permission_prompt" or (
                s["status"] == "idle" and not h.get("queuedPrompts")):
            return {**_compact(s), "timedOut": False}
        if time.monotonic() >= deadline:
            return {**_compact(s), "timedOut": True}
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)


def _create(srv: Server, a: dict[str, Any]) -> Any:
    s = srv.call("session.create", workDir=a["workDir"], name=a.get("name"), prompt=a.get("prompt"),
                 permissionMode=a.get("permissionMode"), agent=a.get("agent"), model=a.get("model"),
                 reuse=a.get("reuse", False))
    return {**_compact(s), "promptDelivery": s.get("promptDelivery"), "reused": s.get("reused", False)}


def _verify(srv: Server, a: dict[str, Any]) -> Any:
    """A failed verification is an answer, not a tool error: the caller wants the steps and their output."""
    try:
        return srv.call("session.verify", id=a["sessionId"], criticalOnly=a.get("criticalOnly"))
    except ToolError as exc:
        if exc.code == "VERIFICATION_FAILED" and isinstance(exc.details, dict):
            return exc.details
        raise


def _pipeline(srv: Server, a: dict[str, Any]) -> Any:
    stages: list[dict[str, Any]] = []
    for i, step in enumerate(a["steps"]):  # unnamed steps get a name (the original's server refused them)
        st = {"name": step.get("name") or f"step-{i + 1}", "prompt": step["prompt"]}
        if step.get("dependsOn"):
            st["dependsOn"] = step["dependsOn"]
        elif i > 0 and a.get("sequential", True):
            st["dependsOn"] = [stages[-1]["name"]]
        if step.get("verify"):
            st["verify"] = True
        stages.append(st)
    return srv.call("pipeline.create", name=a["name"], workDir=a["workDir"], stages=stages)


TOOLS: list[Tool] = [
    Tool("list_sessions", "List sessions (all pages), optionally by status (a state, or active/ended) or workDir.",
         _schema({"status": S, "workDir": S}), _list),
    Tool("get_status", "One session's state, pending permission request, crash details and health.",
         _schema(SID, ["sessionId"]), _status),
    Tool("get_transcript", "The session's transcript (newest `limit` entries, default 50).",
         _schema({**SID, "limit": {"type": "integer", "minimum": 1, "maximum": 200}}, ["sessionId"]),
         lambda srv, a: srv.call("session.transcript.cursor", id=a["sessionId"], limit=a.get("limit", 50))),
    Tool("wait_for_session", "Block until the session needs attention: its turn ended (idle), it waits for a "
         "permission decision, or it ended; or until timeoutSeconds (default 300). Use instead of polling.",
         _schema({**SID, "timeoutSeconds": {"type": "number", "minimum": 0, "maximum": 3600}}, ["sessionId"]), _wait),
    Tool("server_health", "The daemon's health.", _schema({}), lambda srv, a: srv.call("health")),
    Tool("capture_pane", "A plain-text rendering of the session's recent transcript.", _schema(SID, ["sessionId"]),
         lambda srv, a: srv.call("session.pane", id=a["sessionId"])),
    Tool("get_session_metrics", "Duration, messages, tool calls, approvals, token usage and cost.",
         _schema(SID, ["sessionId"]), lambda srv, a: srv.call("session.metrics", id=a["sessionId"])),
    Tool("get_session_summary", "Status and the last entries of a session.", _schema(SID, ["sessionId"]),
         lambda srv, a: srv.call("session.summary", id=a["sessionId"])),
    Tool("get_session_latency", "Permission response latencies of a session.", _schema(SID, ["sessionId"]),
         lambda srv, a: srv.call("session.latency", id=a["sessionId"])),
    Tool("list_pipelines", "Pipelines and their stages.", _schema({}), lambda srv, a: srv.call("pipeline.list")),
    Tool("state_get", "Read a memory-bridge value ('namespace/key').", _schema({"key": S}, ["key"]),
         lambda srv, a: srv.call("memory.get", key=a["key"])),
    Tool("send_message", "Send a prompt to a session (queued if a turn is running).",
         _schema({**SID, "text": S}, ["sessionId", "text"]),
         lambda srv, a: srv.call("session.send", id=a["sessionId"], text=a["text"]), read_only=False),
    Tool("create_session", "Start a new agent session in workDir, optionally with a first prompt.",
         _schema({"workDir": S, "name": S, "prompt": S, "agent": S, "model": S,
                  "permissionMode": {"type": "string", "enum": ["default", "acceptEdits", "plan", "dontAsk",
                                                                 "bypassPermissions"]},
                  "reuse": {"type": "boolean", "description": "reuse an idle session in the same workDir"}},
                 ["workDir"]), _create, read_only=False),
    Tool("approve_permission", "Approve the session's pending permission request (allow once). Pass the "
         "requestId of the request you looked at (pendingPermission.requestId from get_status or "
         "wait_for_session): if another one is pending by then, nothing is decided.",
         _schema({**SID, **REQ}, ["sessionId"]),
         lambda srv, a: srv.call("session.approve", id=a["sessionId"], requestId=a.get("requestId")),
         read_only=False),
    Tool("reject_permission", "Reject the session's pending permission request. Pass the requestId of the "
         "request you looked at, as for approve_permission.", _schema({**SID, **REQ}, ["sessionId"]),
         lambda srv, a: srv.call("session.reject", id=a["sessionId"], requestId=a.get("requestId")),
         read_only=False),
    Tool("interrupt_session", "Cancel the session's current turn.", _schema(SID, ["sessionId"]),
         lambda srv, a: srv.call("session.interrupt", id=a["sessionId"]), read_only=False),
    Tool("escape_session", "Same as interrupt_session (the original's Escape key).", _schema(SID, ["sessionId"]),
         lambda srv, a: srv.call("session.interrupt", id=a["sessionId"]), read_only=False),
    Tool("send_command", "Run one of the agent's slash commands in the session.",
         _schema({**SID, "command": S}, ["sessionId", "command"]),
         lambda srv, a: srv.call("session.command", id=a["sessionId"], command=a["command"]), read_only=False),
    Tool("batch_create_sessions", "Create up to 50 sessions at once.",
         _schema({"sessions": {"type": "array", "minItems": 1, "maxItems": 50, "items": _schema(
             {"workDir": S, "name": S, "prompt": S}, ["workDir"])}}, ["sessions"]),
         lambda srv, a: srv.call("sessions.batch_create", sessions=a["sessions"]), read_only=False),
    Tool("create_pipeline", "Run prompts as a pipeline of sessions in workDir: steps run one after another "
         "(or by their dependsOn).",
         _schema({"name": S, "workDir": S, "sequential": {"type": "boolean"},
                  "steps": {"type": "array", "minItems": 1, "maxItems": 50, "items": _schema(
                      {"name": S, "prompt": S, "dependsOn": {"type": "array", "items": S},
                       "verify": {"type": "boolean", "description": "run the project's checks after the step; "
                                  "failures go back to the step's session to fix"}}, ["prompt"])}},
                 ["name", "workDir", "steps"]), _pipeline, read_only=False),
    Tool("state_set", "Write a memory-bridge value.",
         _schema({"key": S, "value": S, "ttlSeconds": {"type": "integer", "minimum": 1}}, ["key", "value"]),
         lambda srv, a: srv.call("memory.set", key=a["key"], value=a["value"], ttlSeconds=a.get("ttlSeconds")),
         read_only=False),
    Tool("state_delete", "Delete a memory-bridge value.", _schema({"key": S}, ["key"]),
         lambda srv, a: srv.call("memory.delete", key=a["key"]), read_only=False, destructive=True),
    Tool("verify_session", "Run the project's own checks (type check, build, tests) in the session's workDir "
         "and report each step's result and output; ok is false when one failed.",
         _schema({**SID, "criticalOnly": {"type": "boolean", "description": "type check and build only"}},
                 ["sessionId"]), _verify, read_only=False),
    Tool("kill_session", "Stop a session and its agent (status killed).", _schema(SID, ["sessionId"]),
         lambda srv, a: srv.call("session.kill", id=a["sessionId"]), read_only=False, destructive=True),
]
TOOLS_BY_NAME = {t.name: t for t in TOOLS}

RESOURCES = [
    {"uri": "aegis://sessions", "name": "sessions", "description": "Every session, compact", "mimeType":
     "application/json"},
    {"uri": "aegis://health", "name": "health", "description": "The daemon's health", "mimeType": "application/json"},
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


class ToolError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class Server:
    def __init__(self, connect: Callable[[], Client], out: IO[str]) -> None:
        self._connect = connect
        self._local = threading.local()  # one daemon connection per worker thread
        self._out = out
        self._lock = threading.Lock()

    def call(self, op: str, **params: Any) -> Any:
        client: Client | None = getattr(self._local, "client", None)
        try:
            if client is None:
                client = self._local.client = self._connect()
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
                                "pendingPermission.requestId you looked at."}

    def _tools_list(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"tools": [{"name": t.name, "description": t.description, "inputSchema": t.schema,
                           "annotations": t.annotations} for t in TOOLS]}

    def _tools_call(self, p: dict[str, Any]) -> dict[str, Any]:
        tool = TOOLS_BY_NAME.get(p.get("name", ""))
        if tool is None:
            raise ToolError("UNKNOWN_TOOL", f"no tool {p.get('name')!r}")
        args = p.get("arguments") or {}
        if not isinstance(args, dict):
            raise ToolError("INVALID_ARGUMENTS", "arguments must be an object")
        problem = _check(tool.schema, args)
        if problem:
            return _tool_error("INVALID_ARGUMENTS", problem)
        try:
            result = tool.run(self, args)
        except ToolError as exc:  # errors of the tool go back to the model as a result it can read
            return _tool_error(exc.code, exc.message)
        text = json.dumps(result, indent=1, ensure_ascii=False)
        out: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
        if isinstance(result, dict):
            out["structuredContent"] = result
        return out

    def _resources_read(self, p: dict[str, Any]) -> dict[str, Any]:
        uri = p["uri"]
        if uri == "aegis://sessions":
            data: Any = _list(self, {})
        elif uri == "aegis://health":
            data = self.call("health")
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


def _tool_error(code: str, message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps({"code": code, "message": message})}], "isError": True}


def _check(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    """The few JSON-schema rules our tool schemas use: required, no extra properties, basic types."""
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in args:
            return f"missing argument {name!r}"
    types: dict[str, Any] = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                             "array": list, "object": dict}
    for name, value in args.items():
        if name not in props:
            return f"unknown argument {name!r} (expected: {', '.join(props) or 'none'})"
        want = props[name].get("type")
        if want and (not isinstance(value, types[want]) or (want in ("integer", "number") and isinstance(value, bool))):
            return f"argument {name!r} must be {want}"
        if "enum" in props[name] and value not in props[name]["enum"]:
            return f"argument {name!r} must be one of {', '.join(props[name]['enum'])}"
    return None


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
