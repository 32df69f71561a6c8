#!/usr/bin/env python3
"""A scriptable fake ACP agent for tests and benchmarks (stdlib only; see docs/fake-agent.md).

NDJSON JSON-RPC 2.0 over stdin/stdout. The text of a prompt is a script of `;`-separated directives
(`say:TEXT`, `tool:KIND:TITLE:ARG`, `wait-for-cancel`, `crash:3`, ...); text with no directive is echoed.
Startup behaviour comes from env FAKE_ACP_MODE."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

OUT_LOCK = threading.Lock()
MODE = os.environ.get("FAKE_ACP_MODE", "")
NO_LOAD = os.environ.get("FAKE_ACP_NO_LOAD") == "1"
FORK = os.environ.get("FAKE_ACP_FORK", "1")  # "1": session/fork works, "0": not advertised, "fail": refused
_modes_env = os.environ.get("FAKE_ACP_MODES")
MODES = (["default", "acceptEdits", "plan", "dontAsk", "bypassPermissions"] if _modes_env is None
         else [m for m in _modes_env.split(",") if m])
# models: FAKE_ACP_MODELS="default,sonnet,haiku" offers them (the first is current) through the mechanism
# FAKE_ACP_MODEL_API names: "config" (a `model` config option, as claude-agent-acp 0.101 does) or "models"
# (the unstable `models` field and session/set_model); unset: no model can be chosen
MODELS = [m for m in os.environ.get("FAKE_ACP_MODELS", "").split(",") if m]
MODEL_API = os.environ.get("FAKE_ACP_MODEL_API", "config")


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def write_raw(data: bytes) -> None:
    with OUT_LOCK:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def send(msg: dict) -> None:
    msg.setdefault("jsonrpc", "2.0")
    write_raw(json.dumps(msg, separators=(",", ":")).encode() + b"\n")


def update(sid: str, upd: dict) -> None:
    send({"method": "session/update", "params": {"sessionId": sid, "update": upd}})


def text_chunk(sid: str, text: str, kind: str = "agent_message_chunk") -> None:
    update(sid, {"sessionUpdate": kind, "content": {"type": "text", "text": text}})


class State:
    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.cancelled: dict[str, threading.Event] = {}
        self.responses: dict[int, queue.Queue] = {}
        self.next_req = 0
        self.lock = threading.Lock()
        self.tool_n = 0

    def state_dir(self, cwd: str) -> str:
        d = os.environ.get("FAKE_ACP_STATE_DIR") or os.path.join(cwd, ".fake-acp")
        os.makedirs(d, exist_ok=True)
        return d

    def save(self, sid: str) -> None:
        s = self.sessions[sid]
        path = os.path.join(self.state_dir(s["cwd"]), f"{sid}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(s, f)
        os.replace(path + ".tmp", path)

    def request(self, method: str, params: dict) -> dict:
        """Agent -> client request; blocks until the client answers."""
        with self.lock:
            rid = self.next_req
            self.next_req += 1
            q: queue.Queue = queue.Queue()
            self.responses[rid] = q
        send({"id": rid, "method": method, "params": params})
        return q.get()


ST = State()


def modes_obj() -> dict | None:
    if not MODES:
        return None
    return {"currentModeId": "default" if "default" in MODES else MODES[0],
            "availableModes": [{"id": m, "name": m} for m in MODES]}


class Cancelled(Exception):
    pass


def check(sid: str) -> None:
    if ST.cancelled[sid].is_set():
        raise Cancelled()


def ask_permission(sid: str, i: int, kind: str, title: str, arg: str, outcomes: list[str]) -> None:
    """One of several permission requests asked at once (`tools:`): appends `i=<optionId or cancelled>`."""
    res = ST.request("session/request_permission", {
        "sessionId": sid,
        "toolCall": {"toolCallId": f"tcp-{i}", "title": f"{title} {i}", "kind": kind,
                     "rawInput": {"command": f"{arg} {i}"}},
        "options": [{"optionId": "allow", "name": "Allow", "kind": "allow_once"},
                    {"optionId": "reject", "name": "Reject", "kind": "reject_once"}]})
    out = (res.get("result") or {}).get("outcome") or {}
    outcomes.append(f"{i}={out.get('optionId') if out.get('outcome') == 'selected' else 'cancelled'}")


def run_turn(req_id: int, sid: str, text: str) -> None:
    sess = ST.sessions[sid]
    sess["history"].append(["user", text])
    said: list[str] = []
    stop = "end_turn"
    directives = [d.strip() for d in text.split(";") if d.strip()]
    known = ("say:", "hang", "chunks:", "think:", "plan:", "tool:", "tools:", "toolauto:", "sleep:", "wait-for-cancel",
             "stream:", "crash", "garbage", "bigline:", "badid", "unknown-request", "grandchild", "stop:", "error:",
             "title:", "recall", "mcp-servers", "sh:", "escape")
    try:
        if not any(d.startswith(known) for d in directives):
            said.append(f"echo: {text}")
            text_chunk(sid, said[-1])
            directives = []
        for d in directives:
            check(sid)
            name, _, arg = d.partition(":")
            if name == "say":
                said.append(arg)
                text_chunk(sid, arg)
            elif name == "chunks":
                n, _, body = arg.partition(":")
                n = max(1, int(n))
                size = max(1, -(-len(body) // n))
                for i in range(0, len(body), size):
                    text_chunk(sid, body[i:i + size])
                said.append(body)
            elif name == "think":
                text_chunk(sid, arg, "agent_thought_chunk")
            elif name == "plan":
                update(sid, {"sessionUpdate": "plan", "entries": [
                    {"content": e, "priority": "medium", "status": "pending"} for e in arg.split("|")]})
            elif name in ("tool", "toolauto"):
                kind, title, targ = (arg.split(":", 2) + ["", ""])[:3]
                ST.tool_n += 1
                tcid = f"tc-{ST.tool_n}"
                update(sid, {"sessionUpdate": "tool_call", "toolCallId": tcid, "title": "Terminal", "kind": kind,
                             "status": "pending", "rawInput": {}})
                update(sid, {"sessionUpdate": "tool_call_update", "toolCallId": tcid, "title": title,
                             "rawInput": {"command": targ}})
                outcome = "allow"
                if name == "tool":
                    res = ST.request("session/request_permission", {
                        "sessionId": sid,
                        "toolCall": {"toolCallId": tcid, "title": title, "kind": kind, "rawInput": {"command": targ}},
                        "options": [{"optionId": "allow-always", "name": "Always Allow", "kind": "allow_always"},
                                    {"optionId": "allow", "name": "Allow", "kind": "allow_once"},
                                    {"optionId": "reject", "name": "Reject", "kind": "reject_once"}]})
                    out = (res.get("result") or {}).get("outcome") or {}
                    if out.get("outcome") == "selected":
                        outcome = out.get("optionId", "?")
                    else:
                        outcome = "cancelled"
                    text_chunk(sid, f"permission: {outcome}")
                    if outcome == "cancelled":
                        raise Cancelled()
                if outcome.startswith("allow"):
                    update(sid, {"sessionUpdate": "tool_call_update", "toolCallId": tcid, "status": "completed",
                                 "rawOutput": "ok", "content": [{"type": "content",
                                                                "content": {"type": "text", "text": f"ran {targ}"}}]})
                else:
                    update(sid, {"sessionUpdate": "tool_call_update", "toolCallId": tcid, "status": "failed",
                                 "content": [{"type": "content",
                                              "content": {"type": "text", "text": "rejected by user"}}]})
            elif name == "tools":  # N permission requests at once (parallel tool calls)
                n, _, rest = arg.partition(":")
                kind, title, targ = (rest.split(":", 2) + ["", ""])[:3]
                outcomes: list[str] = []

                asks = [threading.Thread(target=ask_permission, args=(sid, i, kind, title, targ, outcomes), daemon=True)
                        for i in range(1, int(n) + 1)]
                for t in asks:
                    t.start()
                for t in asks:
                    t.join()
                text_chunk(sid, "permissions: " + " ".join(sorted(outcomes)))
                if any(o.endswith("=cancelled") for o in outcomes):
                    raise Cancelled()
            elif name == "sleep":
                if ST.cancelled[sid].wait(int(arg) / 1000):
                    raise Cancelled()
            elif name == "hang":  # ignores session/cancel: a misbehaving agent
                time.sleep(int(arg or "3600000") / 1000)
            elif name == "wait-for-cancel":
                ST.cancelled[sid].wait()
                raise Cancelled()
            elif name == "stream":
                for _ in range(int(arg)):
                    text_chunk(sid, "x" * 10)
            elif name == "crash":
                log("fake agent crashing on purpose")
                os._exit(int(arg) if arg else 3)
            elif name == "garbage":
                write_raw(b"this is not json\n")
            elif name == "bigline":
                pad = "y" * max(0, int(arg) - 150)
                update(sid, {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": pad}})
            elif name == "badid":
                send({"id": 999999, "result": {}})
            elif name == "unknown-request":
                res = ST.request("x/unknown_method", {"sessionId": sid})
                if "error" in res:
                    text_chunk(sid, f"unknown-request: error {res['error'].get('code')}")
                else:
                    text_chunk(sid, "unknown-request: result")
            elif name in ("grandchild", "grandchild-setsid"):
                p = subprocess.Popen(["sleep", "1000"], start_new_session=(name == "grandchild-setsid"),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                pid_file = os.environ.get("FAKE_ACP_PID_FILE")
                if pid_file:
                    with open(pid_file, "a") as f:
                        f.write(f"{p.pid}\n")
                text_chunk(sid, f"grandchild: {p.pid}")
            elif name == "escape":
                # what a tool bent on surviving does: a new session, an empty environment, a double fork (the
                # survivor is reparented away from the agent), stdio closed
                res = subprocess.run(["/bin/sh", "-c", "setsid env -i /bin/sleep 1000 </dev/null >/dev/null 2>&1 & "
                                      "echo $!"], stdin=subprocess.DEVNULL, capture_output=True, check=True)
                pid = int(res.stdout.strip())
                pid_file = os.environ.get("FAKE_ACP_PID_FILE")
                if pid_file:
                    with open(pid_file, "a") as f:
                        f.write(f"{pid}\n")
                text_chunk(sid, f"escaped: {pid}")
            elif name == "sh":  # a tool the agent runs: a shell command (base64), its output said back
                import base64

                res = subprocess.run(["/bin/sh", "-c", base64.b64decode(arg).decode()], stdin=subprocess.DEVNULL,
                                     capture_output=True, cwd=sess["cwd"], timeout=60)
                said.append(f"sh[{res.returncode}]: " + (res.stdout + res.stderr).decode(errors="replace"))
                text_chunk(sid, said[-1])
            elif name == "stop":
                stop = arg
            elif name == "error":  # error:CODE or error:CODE:MESSAGE (e.g. error:-32000:Authentication required)
                code, _, message = arg.partition(":")
                send({"id": req_id, "error": {"code": int(code), "message": message or f"scripted error {code}"}})
                return
            elif name == "title":
                update(sid, {"sessionUpdate": "session_info_update", "title": arg})
            elif name == "mcp-servers":  # the MCP servers the client gave this session
                said.append("mcp: " + ",".join(sess.get("mcpServers") or []))
                text_chunk(sid, said[-1])
            elif name == "recall":  # what this session remembers: proves a fork carried the context over
                earlier = [t for role, t in sess["history"][:-1] if role == "user"]
                said.append("recall: " + " | ".join(earlier))
                text_chunk(sid, said[-1])
            else:
                said.append(f"echo: {d}")
                text_chunk(sid, said[-1])
    except Cancelled:
        stop = "cancelled"
    for s in said:
        sess["history"].append(["agent", s])
    ST.save(sid)
    usage_update = {"sessionUpdate": "usage_update", "used": 15, "size": 200000}
    if os.environ.get("FAKE_ACP_COST_PER_TURN"):  # the agent's own cumulative cost report, as claude-agent-acp's
        sess["cost"] = round(sess.get("cost", 0.0) + float(os.environ["FAKE_ACP_COST_PER_TURN"]), 6)
        usage_update["cost"] = {"amount": sess["cost"], "currency": "USD"}
    update(sid, usage_update)
    send({"id": req_id, "result": {"stopReason": stop,
                                   "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}}})


def config_options(sid: str) -> list[dict]:
    current = ST.sessions[sid].get("model") or MODELS[0]
    return [{"id": "model", "name": "Model", "category": "model", "type": "select", "currentValue": current,
             "options": [{"value": m, "name": m.title()} for m in MODELS]},
            {"id": "effort", "name": "Effort", "category": "thought_level", "type": "select",
             "currentValue": "default", "options": [{"value": "default", "name": "Default"}]}]


def model_fields(sid: str) -> dict:
    if not MODELS:
        return {}
    if MODEL_API == "models":
        return {"models": {"availableModels": [{"modelId": m, "name": m.title()} for m in MODELS],
                           "currentModelId": ST.sessions[sid].get("model") or MODELS[0]}}
    return {"configOptions": config_options(sid)}


def handle(msg: dict) -> None:
    method, mid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method is None:  # a response to one of our requests
        q = ST.responses.pop(mid, None)
        if q is not None:
            q.put(msg)
        return
    if method == "initialize":
        if MODE == "hang-initialize":
            return
        send({"id": mid, "result": {
            "protocolVersion": 1,
            "agentCapabilities": {"loadSession": not NO_LOAD,
                                  "promptCapabilities": {"image": False, "embeddedContext": True},
                                  "sessionCapabilities": {"fork": {}} if FORK != "0" else {}},
            "agentInfo": {"name": "fake-acp-agent", "title": "Fake ACP agent", "version": "1.0"},
            "authMethods": []}})
    elif method == "session/new":
        cwd = params.get("cwd")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            send({"id": mid, "error": {"code": -32602, "message": "cwd must be an absolute path"}})
            return
        sid = str(uuid.uuid4())
        ST.sessions[sid] = {"cwd": cwd, "history": [], "mode": "default",
                            "mcpServers": [m.get("name") for m in params.get("mcpServers") or []]}
        ST.cancelled[sid] = threading.Event()
        ST.save(sid)
        result: dict = {"sessionId": sid, **model_fields(sid)}
        if modes_obj():
            result["modes"] = modes_obj()
        send({"id": mid, "result": result})
        update(sid, {"sessionUpdate": "available_commands_update", "availableCommands": [
            {"name": "review", "description": "Review code"}, {"name": "test", "description": "Run tests"}]})
    elif method == "session/load" and not NO_LOAD:
        sid, cwd = params.get("sessionId"), params.get("cwd") or "/"
        path = os.path.join(ST.state_dir(cwd), f"{sid}.json")
        try:
            with open(path) as f:
                ST.sessions[sid] = json.load(f)
        except (OSError, ValueError):
            send({"id": mid, "error": {"code": -32002, "message": f"Resource not found: {sid}"}})
            return
        ST.cancelled[sid] = threading.Event()
        for role, text in ST.sessions[sid]["history"]:
            text_chunk(sid, text, "user_message_chunk" if role == "user" else "agent_message_chunk")
        result = {"modes": modes_obj()} if modes_obj() else {}
        result.update(model_fields(sid))
        if os.environ.get("FAKE_ACP_LOAD_NULL") == "1":  # older agents answered session/load with null
            result = None
        send({"id": mid, "result": result})
    elif method == "session/fork" and FORK != "0":
        src, cwd = params.get("sessionId"), params.get("cwd") or "/"
        path = os.path.join(ST.state_dir(cwd), f"{src}.json")
        try:
            if FORK == "fail":
                raise OSError("fork refused (FAKE_ACP_FORK=fail)")
            with open(path) as f:
                copied = json.load(f)
        except (OSError, ValueError) as exc:
            send({"id": mid, "error": {"code": -32002, "message": f"cannot fork {src}: {exc}"}})
            return
        sid = str(uuid.uuid4())
        ST.sessions[sid] = {"cwd": cwd, "history": copied["history"], "mode": copied.get("mode", "default"),
                            "forkedFrom": src, "model": copied.get("model")}
        ST.cancelled[sid] = threading.Event()
        ST.save(sid)
        result = {"sessionId": sid, **model_fields(sid)}
        if modes_obj():
            result["modes"] = modes_obj()
        send({"id": mid, "result": result})
    elif method == "session/set_config_option" and MODELS and MODEL_API == "config":
        sid, cid, value = params.get("sessionId"), params.get("configId"), params.get("value")
        if sid not in ST.sessions or cid != "model" or value not in MODELS:
            send({"id": mid, "error": {"code": -32602,
                                       "message": f"Invalid params: Invalid value for config option {cid}: {value}"}})
            return
        ST.sessions[sid]["model"] = value
        ST.save(sid)
        send({"id": mid, "result": {"configOptions": config_options(sid)}})
    elif method == "session/set_model" and MODELS and MODEL_API == "models":
        sid, model = params.get("sessionId"), params.get("modelId")
        if sid not in ST.sessions or model not in MODELS:
            send({"id": mid, "error": {"code": -32602, "message": f"unknown model {model}"}})
            return
        ST.sessions[sid]["model"] = model
        ST.save(sid)
        send({"id": mid, "result": {}})
    elif method == "session/set_mode":
        sid, mode = params.get("sessionId"), params.get("modeId")
        if sid not in ST.sessions or mode not in MODES:
            send({"id": mid, "error": {"code": -32602, "message": f"unknown mode {mode}"}})
            return
        ST.sessions[sid]["mode"] = mode
        send({"id": mid, "result": {}})
        update(sid, {"sessionUpdate": "current_mode_update", "currentModeId": mode})
    elif method == "session/prompt":
        sid = params.get("sessionId")
        if sid not in ST.sessions:
            send({"id": mid, "error": {"code": -32603, "message": "Internal error",
                                       "data": {"details": "Session not found"}}})
            return
        text = "".join(b.get("text", "") for b in params.get("prompt", []) if b.get("type") == "text")
        ST.cancelled[sid] = threading.Event()  # before the thread: a cancel right after must not be lost
        threading.Thread(target=run_turn, args=(mid, sid, text), daemon=True).start()
    elif method == "session/cancel":
        ev = ST.cancelled.get(params.get("sessionId"))
        if ev is not None:
            ev.set()
    elif mid is not None:
        send({"id": mid, "error": {"code": -32601, "message": f"Method not found: {method}"}})


def main() -> None:
    log(f"fake-acp-agent started pid={os.getpid()}")
    if os.environ.get("FAKE_ACP_STDERR_ON_START"):
        log(os.environ["FAKE_ACP_STDERR_ON_START"])
    if MODE == "exit-before-initialize":
        os._exit(42)
    if MODE == "noisy-stdout":
        write_raw(b"starting up...\n")
    if MODE in ("ignore-sigterm", "stubborn"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE.startswith("slow-start:"):
        time.sleep(int(MODE.split(":", 1)[1]) / 1000)
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            send({"id": None, "error": {"code": -32700, "message": "Parse error"}})
            continue
        handle(msg)
    if MODE in ("ignore-stdin-eof", "stubborn"):
        while True:
            time.sleep(3600)
    os._exit(0)


if __name__ == "__main__":
    main()
