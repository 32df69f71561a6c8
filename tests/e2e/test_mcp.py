"""`ag mcp` driven by the official MCP Python SDK client (package `mcp`) over stdio, against a live daemon with
the fake agent: an agent's view of Aegis. Every tool is generated from the operations registry (its schema
from the operation's params struct), and every tool is called here at least once (checked below)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from aegisctl.mcp import TOOLS
from aegisd.core.errors import ValidationError
from aegisd.ops import REGISTRY, decode_params

from ..conftest import DaemonHandle, agent_env

mcp = pytest.importorskip("mcp", reason="the MCP Python SDK is not installed (make install)")
jsonschema = pytest.importorskip("jsonschema")  # a dependency of mcp

ROOT = Path(__file__).resolve().parents[2]
BY_NAME = {t.name: t for t in TOOLS}


@asynccontextmanager
async def mcp_client(socket: Path, home: Path) -> AsyncIterator[Any]:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "aegisctl", "mcp"],
                                   env={"AEGIS_SOCKET": str(socket), "PATH": os.environ.get("PATH", ""),
                                        "HOME": str(home)})
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "aegis"
            yield session


async def call(s: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    """A tool's result, which must not be an error; it also decodes into the operation's result type."""
    res = await s.call_tool(name, args or {})
    assert not res.is_error, (name, res.content[0].text)
    data = json.loads(res.content[0].text)
    result_type = REGISTRY[BY_NAME[name].op].result
    if result_type is not None and BY_NAME[name].run is None:
        msgspec.convert(data, result_type)
    return data


async def fails(s: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool error: a result with isError and a JSON body with the code, that the model can read."""
    res = await s.call_tool(name, args)
    assert res.is_error, (name, res.content[0].text)
    body: dict[str, Any] = json.loads(res.content[0].text)
    return body


# ---- the tools and their schemas -------------------------------------------------------------------------
def expected_arguments(name: str) -> tuple[set[str], set[str]]:
    """A tool's arguments and required ones, straight from its operation's params struct and the table."""
    tool = BY_NAME[name]
    to_tool = {v: k for k, v in tool.rename.items()}
    names, required = set(), set()
    for f in msgspec.structs.fields(REGISTRY[tool.op].params):
        if f.encode_name in tool.hide or f.encode_name in tool.fixed:
            continue
        names.add(to_tool.get(f.encode_name, f.encode_name))
        if f.required:
            required.add(to_tool.get(f.encode_name, f.encode_name))
    return names, required


WRONG = {"string": 12345, "integer": "x", "number": "x", "boolean": "x", "array": "x", "object": "x"}


def sample(prop: dict[str, Any]) -> Any:
    """The smallest value a schema accepts (enough for these schemas)."""
    if "enum" in prop:
        return prop["enum"][0]
    kind = prop.get("type")
    if kind == "object":
        return {k: sample(prop["properties"][k]) for k in prop.get("required", [])}
    if kind == "array":
        return [sample(prop.get("items", {"type": "string"}))] * prop.get("minItems", 0)
    if kind in ("integer", "number"):
        return prop.get("minimum", 1)
    return {"string": "abcd", "boolean": True}[kind]


async def test_tools_come_from_the_registry(tmp_path: Path) -> None:
    """No daemon is needed to list the tools."""
    async with mcp_client(tmp_path / "none.sock", tmp_path) as s:
        tools = (await s.list_tools()).tools
    assert len(tools) >= 34  # the guide's count
    assert len({t.name for t in tools}) == len(tools) and "send_bash" not in {t.name for t in tools}
    for t in tools:
        spec, schema = BY_NAME[t.name], t.input_schema
        op = REGISTRY[spec.op]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert "$ref" not in json.dumps(schema) and "$defs" not in schema, t.name  # self-contained
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        names, required = expected_arguments(t.name)
        assert set(schema["properties"]) == names, t.name
        assert set(schema["required"]) == required, t.name
        assert t.description.startswith(op.summary.rstrip(".")), t.name
        assert t.annotations.read_only_hint is (op.permission in (None, "public")), t.name
        for arg, default in spec.defaults.items():
            assert schema["properties"][arg]["default"] == default
        # the smallest arguments the schema accepts, the operation accepts too; and an argument of another type
        # is refused by both, at that argument
        validator = jsonschema.Draft202012Validator(schema)
        filled = sample(schema)
        assert validator.is_valid(filled), (t.name, filled)
        decode_params(op, {**spec.defaults, **{spec.rename.get(k, k): v for k, v in filled.items()}})
        for arg, prop in schema["properties"].items():
            if prop.get("type") not in WRONG:
                continue
            bad = {**filled, arg: WRONG[prop["type"]]}
            assert [list(e.path) for e in validator.iter_errors(bad)] == [[arg]], (t.name, arg)
            with pytest.raises(ValidationError, match=re.escape(f"`$.{spec.rename.get(arg, arg)}`")):
                decode_params(op, {spec.rename.get(k, k): v for k, v in bad.items()})
    by_name = {t.name: t for t in tools}
    # the original's argument names, and what the operations added since
    assert {"workDir", "name", "prompt", "permissionMode", "model", "agent", "reuse", "templateId", "parentId"} <= \
        set(by_name["create_session"].input_schema["properties"])
    assert "auto" in by_name["create_session"].input_schema["properties"]["permissionMode"]["enum"]
    assert by_name["create_session"].input_schema["properties"]["reuse"]["default"] is False
    assert by_name["approve_permission"].input_schema["required"] == ["sessionId"]
    assert "requestId" in by_name["approve_permission"].input_schema["properties"]
    steps = by_name["create_pipeline"].input_schema["properties"]["steps"]
    assert steps["items"]["required"] == ["prompt"] and "stages" not in by_name["create_pipeline"].input_schema[
        "properties"]
    assert by_name["kill_session"].annotations.destructive_hint is True

    # docs/mcp.md lists every tool and nothing else
    doc = (ROOT / "docs" / "mcp.md").read_text()
    rows = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    assert {name for cell in rows for name in re.findall(r"`(\w+)`", cell)} == set(BY_NAME)
    assert f"{len(TOOLS)} tools" in doc


def test_every_tool_is_called_by_these_tests() -> None:
    called = set(re.findall(r"\b(?:call|fails)\(s, \"(\w+)\"", Path(__file__).read_text()))
    assert called == set(BY_NAME), set(BY_NAME) ^ called


# ---- a live daemon ---------------------------------------------------------------------------------------
async def test_sessions_permissions_and_events(daemon: DaemonHandle, workdir: Path) -> None:
    async with mcp_client(daemon.daemon.socket_path, workdir) as s:
        assert (await call(s, "server_health"))["status"] == "ok"
        info = await call(s, "server_info")
        assert info["daemon"] == "aegisd" and "session" not in info  # not called from inside a session
        me = await call(s, "whoami")
        assert me["kind"] == "local" and me["role"] == "admin" and me["sessionId"] is None

        created = await call(s, "create_session", {"workDir": str(workdir), "name": "from-mcp",
                                                   "prompt": "say:working;tool:execute:Run:make"})
        sid = created["id"]
        assert created["reused"] is False and created["permissionMode"] == "default"
        waited = await call(s, "wait_for_session", {"sessionId": sid[:8], "timeoutSeconds": 20})
        assert waited["status"] == "permission_prompt" and waited["timedOut"] is False
        req = waited["pendingPermission"]
        assert req["toolTitle"] == "Run"
        pending = (await call(s, "list_pending_permissions"))["pending"]
        assert [(p["sessionId"], p["requestId"], p["position"]) for p in pending] == [(sid, req["requestId"], 0)]

        # approve names the request it decides: another id decides nothing
        bad = await fails(s, "approve_permission", {"sessionId": sid, "requestId": "perm-0-0"})
        assert bad["code"] == "PERMISSION_REQUEST_MISMATCH"
        decided = await call(s, "approve_permission", {"sessionId": sid, "requestId": req["requestId"]})
        assert decided["requestId"] == req["requestId"]
        waited = await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20})
        assert waited["status"] == "idle" and waited["turns"] == 1 and waited["timedOut"] is False
        assert (await call(s, "list_pending_permissions"))["pending"] == []

        texts = [m["text"] for m in (await call(s, "get_transcript", {"sessionId": sid}))["messages"]]
        assert "working" in texts and "permission: allow" in texts
        new = [m["text"] for m in (await call(s, "read_messages", {"sessionId": sid}))["messages"]]
        assert "working" in new
        assert (await call(s, "read_messages", {"sessionId": sid}))["messages"] == []  # nothing new since
        status = await call(s, "get_status", {"sessionId": sid})
        assert status["status"] == "idle" and status["health"]["alive"] is True
        assert "working" in (await call(s, "capture_pane", {"sessionId": sid}))["pane"]
        summary = await call(s, "get_session_summary", {"sessionId": sid})
        assert summary["status"] == "idle" and "working" in [m["text"] for m in summary["messages"]]
        metrics = await call(s, "get_session_metrics", {"sessionId": sid})
        assert metrics["turns"] == 1 and metrics["toolCalls"] == 1 and metrics["approvals"] == 1
        latency = await call(s, "get_session_latency", {"sessionId": sid})
        assert latency["aggregated"]["permission_response_ms"]["count"] == 1
        listed = await call(s, "list_sessions", {"status": "active"})
        assert [x["name"] for x in listed["sessions"]] == ["from-mcp"] and listed["total"] == 1

        # events after an id: nothing yet (a short wait), then the turn a prompt starts
        now = await call(s, "follow_events", {"sessionId": sid, "timeoutSeconds": 0})
        assert now["events"] == [] and now["timedOut"] is True
        sent = await call(s, "send_message", {"sessionId": sid, "text": "say:again"})
        assert sent["delivered"] is True
        seen: list[dict[str, Any]] = []
        after = now["lastId"]
        while not any(e["event"] == "turn" for e in seen):
            page = await call(s, "follow_events", {"sessionId": sid, "afterId": after, "timeoutSeconds": 20})
            assert not page["timedOut"] and all(e["id"] > after for e in page["events"])
            seen += page["events"]
            after = page["lastId"]
        assert "again" in [e["data"].get("text") for e in seen if e["event"] == "message"]

        # a turn still running: the wait times out and says so; interrupt (and the original's escape) end it
        async def running() -> None:
            await call(s, "send_message", {"sessionId": sid, "text": "wait-for-cancel"})
            waited = await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 0.3})
            assert waited["timedOut"] is True and waited["status"] == "running"

        async def cancelled() -> None:
            waited = await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20})
            assert waited["status"] == "idle" and waited["stopReason"] == "cancelled"
        await running()
        assert (await call(s, "interrupt_session", {"sessionId": sid}))["interrupted"] is True
        await cancelled()
        await running()
        assert (await call(s, "escape_session", {"sessionId": sid}))["interrupted"] is True
        await cancelled()

        # the permission mode of a live session: the agent applies bypassPermissions, nobody is asked
        mode = await call(s, "set_permission_mode", {"sessionId": sid, "mode": "bypassPermissions"})
        assert mode["appliedBy"] == "agent" and mode["currentMode"] == "bypassPermissions"
        await call(s, "send_message", {"sessionId": sid, "text": "tool:execute:Run:rm"})
        waited = await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20})
        assert waited["status"] == "idle"
        texts = [m["text"] for m in (await call(s, "get_transcript", {"sessionId": sid, "limit": 8}))["messages"]]
        assert any(t.startswith("auto-approved (bypassPermissions)") for t in texts), texts
        # auto (which this agent does not offer): the daemon approves reads and asks for the rest
        mode = await call(s, "set_permission_mode", {"sessionId": sid, "mode": "auto"})
        assert mode["appliedBy"] == "daemon" and mode["currentMode"] == "default"
        await call(s, "send_message", {"sessionId": sid, "text": "tool:execute:Run:rm"})
        waited = await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20})
        assert waited["status"] == "permission_prompt"
        decided = await call(s, "reject_permission", {"sessionId": sid,
                                                      "requestId": waited["pendingPermission"]["requestId"]})
        assert decided["optionId"] == "reject"
        assert (await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20}))["status"] == "idle"

        # errors come back as tool results the model can read, in the tool's own argument names
        assert (await fails(s, "get_status", {"sessionId": "nope"}))["code"] == "SESSION_NOT_FOUND"
        bad = await fails(s, "get_status", {})
        assert bad["code"] == "INVALID_ARGUMENTS" and "`sessionId`" in bad["message"]
        bad = await fails(s, "create_session", {"workDir": "/etc", "bogus": 1})
        assert bad["code"] == "INVALID_ARGUMENTS" and "unknown argument 'bogus'" in bad["message"]
        bad = await fails(s, "set_permission_mode", {"sessionId": sid, "mode": "yolo"})
        assert bad["code"] == "INVALID_ARGUMENTS" and "`$.mode`" in bad["message"]
        assert (await fails(s, "create_session", {"workDir": "/etc"}))["code"] == "INVALID_WORKDIR"

        res = await s.read_resource("aegis://sessions")
        assert json.loads(res.contents[0].text)["total"] == 1
        res = await s.read_resource("aegis://permissions/pending")
        assert json.loads(res.contents[0].text) == {"pending": [], "total": 0}
        prompt = await s.get_prompt("debug_session", {"sessionId": sid})
        assert sid in prompt.messages[0].content.text

        assert (await call(s, "kill_session", {"sessionId": sid}))["status"] == "killed"
        assert (await daemon.http.get(f"/v1/sessions/{sid}")).json()["status"] == "killed"
        waited = await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 60})
        assert waited["status"] == "killed" and waited["timedOut"] is False


async def test_acp_control(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODELS="default,sonnet,haiku"))
    async with mcp_client(d.daemon.socket_path, workdir) as s:
        sid = (await call(s, "create_session", {"workDir": str(workdir), "prompt": "say:first"}))["id"]
        await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20})

        switched = await call(s, "set_model", {"sessionId": sid, "model": "sonnet"})
        assert switched["model"] == "sonnet" and switched["models"] == ["default", "sonnet", "haiku"]
        bad = await fails(s, "set_model", {"sessionId": sid, "model": "gpt-9"})
        assert bad["code"] == "INVALID_MODEL" and bad["details"]["models"] == ["default", "sonnet", "haiku"]

        commands = (await call(s, "list_commands", {"sessionId": sid}))["commands"]
        assert [c["name"] for c in commands] == ["review", "test"]
        assert (await call(s, "send_command", {"sessionId": sid, "command": "review"}))["delivered"] is True
        await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20})
        assert "echo: /review" in [m["text"] for m in (await call(s, "get_transcript", {"sessionId": sid}))[
            "messages"]]
        assert (await fails(s, "send_command", {"sessionId": sid, "command": "nope"}))["code"] == "VALIDATION_ERROR"

        fork = await call(s, "fork_session", {"sessionId": sid, "name": "forked", "prompt": "recall"})
        assert fork["forkedFrom"] == sid and fork["forkMethod"] == "acp"
        await call(s, "wait_for_session", {"sessionId": fork["id"], "timeoutSeconds": 20})
        recalled = [m["text"] for m in (await call(s, "get_transcript", {"sessionId": fork["id"]}))["messages"]]
        assert any(t.startswith("recall: ") and "say:first" in t for t in recalled), recalled

        batch = await call(s, "batch_create_sessions", {"sessions": [
            {"workDir": str(workdir), "name": "kid", "parentId": sid}, {"workDir": "/etc"}]})
        assert batch["created"] == 1 and batch["failed"] == 1 and batch["errors"][0]["code"] == "INVALID_WORKDIR"
        kids = (await call(s, "list_children", {"sessionId": sid}))["children"]
        assert [k["name"] for k in kids] == ["kid"]

        # the daemon's permission profile: a deny rule decides without asking anyone
        profile = await call(s, "set_permission_profile", {"sessionId": sid, "defaultBehavior": "ask",
                                                           "rules": [{"tool": "execute", "behavior": "deny"}]})
        assert profile["permissionProfile"]["rules"] == [{"tool": "execute", "behavior": "deny"}]
        got = await call(s, "get_permission_profile", {"sessionId": sid})
        assert got["permissionProfile"] == profile["permissionProfile"]
        await call(s, "send_message", {"sessionId": sid, "text": "tool:execute:Run:rm -rf x"})
        assert (await call(s, "wait_for_session", {"sessionId": sid, "timeoutSeconds": 20}))["status"] == "idle"
        texts = [m["text"] for m in (await call(s, "get_transcript", {"sessionId": sid, "limit": 8}))["messages"]]
        assert any(t.startswith("auto-rejected (permission profile)") for t in texts), texts

        # verification: the project's checks, pass and fail both answered as results
        (workdir / "Makefile").write_text("build:\n\t@echo built\ntest:\n\t@echo 'E   boom'; exit 1\n")
        verdict = await s.call_tool("verify_session", {"sessionId": sid})
        assert not verdict.is_error
        body = json.loads(verdict.content[0].text)
        assert body["ok"] is False and "boom" in body["steps"][1]["output"]
        body = await call(s, "verify_session", {"sessionId": sid, "criticalOnly": True})
        assert body["ok"] is True and [x["name"] for x in body["steps"]] == ["build"]

        closed = await call(s, "close_session", {"sessionId": fork["id"]})
        assert closed["status"] == "completed"
        assert d.manager.records[fork["id"]].status.value == "completed"


async def test_memory_templates_and_pipelines(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(memoryBridge={"enabled": True})
    async with mcp_client(d.daemon.socket_path, workdir) as s:
        await call(s, "state_set", {"key": "project/notes", "value": "use trio", "ttlSeconds": 600})
        assert (await call(s, "state_get", {"key": "project/notes"}))["entry"]["value"] == "use trio"
        listed = (await call(s, "state_list", {"prefix": "project/"}))["entries"]
        assert [e["key"] for e in listed] == ["project/notes"]
        await call(s, "state_delete", {"key": "project/notes"})
        assert (await fails(s, "state_get", {"key": "project/notes"}))["code"] == "NOT_FOUND"

        t = await call(s, "create_template", {"name": "greeter", "workDir": str(workdir), "prompt": "say:hi"})
        assert [x["id"] for x in await call(s, "list_templates")] == [t["id"]]
        assert (await call(s, "get_template", {"templateId": t["id"]}))["prompt"] == "say:hi"
        used = await call(s, "create_session", {"templateId": t["id"], "name": "templated"})
        assert used["workDir"] == str(workdir)
        assert (await call(s, "wait_for_session", {"sessionId": used["id"], "timeoutSeconds": 20}))["turns"] == 1
        assert (await call(s, "delete_template", {"templateId": t["id"]}))["ok"] is True
        assert (await fails(s, "get_template", {"templateId": t["id"]}))["code"] == "NOT_FOUND"

        # a pipeline of unnamed steps: one after another, as the original's MCP tool ran them
        p = await call(s, "create_pipeline", {"name": "two", "workDir": str(workdir),
                                              "steps": [{"prompt": "say:one"}, {"prompt": "say:two"}]})
        assert [(x["name"], x["dependsOn"]) for x in p["stages"]] == [("stage-1", []), ("stage-2", ["stage-1"])]
        await d.wait_event(p["id"], "pipeline", match=lambda e: e.data["status"] == "completed", timeout=30)
        done = await call(s, "get_pipeline", {"pipelineId": p["id"]})
        assert done["status"] == "completed" and all(x["status"] == "completed" for x in done["stages"])
        assert [x["id"] for x in await call(s, "list_pipelines")] == [p["id"]]
        bad = await fails(s, "create_pipeline", {"name": "x", "workDir": str(workdir), "steps": [{"name": "a"}]})
        assert bad["code"] == "INVALID_ARGUMENTS" and "`$.steps[0]`" in bad["message"]


async def test_mcp_without_a_daemon(tmp_path: Path) -> None:
    """No daemon: the server still starts and answers, and the tools say SERVER_UNREACHABLE."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aegisctl", "mcp"], stdin=-1, stdout=-1,
        env={"AEGIS_SOCKET": str(tmp_path / "none.sock"), "AEGIS_PORT": "1", "PATH": os.environ.get("PATH", "")})
    assert proc.stdin is not None and proc.stdout is not None
    reqs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
                                                                          "capabilities": {}, "clientInfo": {
                                                                              "name": "t", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "server_health", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 3, "method": "nope/nope"}]
    await proc.stdin.send_all(b"".join(json.dumps(r).encode() + b"\n" for r in reqs) + b"not json\n")
    await proc.stdin.aclose()
    buf = b""
    with trio.fail_after(20):
        while chunk := await proc.stdout.receive_some():
            buf += chunk
    assert await proc.wait() == 0
    replies = {r.get("id"): r for r in map(json.loads, buf.splitlines())}
    assert replies[1]["result"]["protocolVersion"] == "2025-06-18"
    health = replies[2]["result"]
    assert health["isError"] and json.loads(health["content"][0]["text"])["code"] == "SERVER_UNREACHABLE"
    assert replies[3]["error"]["code"] == -32601 and replies[None]["error"]["code"] == -32700
