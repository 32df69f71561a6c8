"""`ag mcp` driven by the official MCP Python SDK client (package `mcp`) over stdio, against a live daemon with
the fake agent: an agent's view of Aegis. Skipped when the SDK is not installed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from ..conftest import DaemonHandle

mcp = pytest.importorskip("mcp", reason="the MCP Python SDK is not installed (make install)")


def _data(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


async def test_mcp_tools_drive_sessions(daemon: DaemonHandle, workdir: Path) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aegisctl", "mcp"],
        env={"AEGIS_SOCKET": str(daemon.daemon.socket_path), "PATH": os.environ.get("PATH", ""),
             "HOME": str(workdir)})
    with open(os.devnull, "w") as errlog, trio.fail_after(60):
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "aegis"
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"create_session", "wait_for_session", "approve_permission", "get_transcript",
                    "kill_session", "list_sessions"} <= names and "send_bash" not in names

            s = _data(await session.call_tool("create_session", {
                "workDir": str(workdir), "name": "from-mcp", "prompt": "say:working;tool:execute:Run:make"}))
            sid = s["id"]
            waited = _data(await session.call_tool("wait_for_session", {"sessionId": sid[:8],
                                                                        "timeoutSeconds": 20}))
            assert waited["status"] == "permission_prompt" and waited["timedOut"] is False
            assert waited["pendingPermission"]["toolTitle"] == "Run"
            _data(await session.call_tool("approve_permission", {"sessionId": sid}))
            waited = _data(await session.call_tool("wait_for_session", {"sessionId": sid, "timeoutSeconds": 20}))
            assert waited["status"] == "idle" and waited["turns"] == 1
            texts = [m["text"] for m in _data(await session.call_tool("get_transcript", {"sessionId": sid}))
                     ["messages"]]
            assert "working" in texts and "permission: allow" in texts
            listed = _data(await session.call_tool("list_sessions", {"status": "active"}))
            assert [x["name"] for x in listed["sessions"]] == ["from-mcp"]

            # a turn still running: the wait times out and says so
            _data(await session.call_tool("send_message", {"sessionId": sid, "text": "wait-for-cancel"}))
            waited = _data(await session.call_tool("wait_for_session", {"sessionId": sid, "timeoutSeconds": 0.3}))
            assert waited["timedOut"] is True and waited["status"] == "running"
            _data(await session.call_tool("interrupt_session", {"sessionId": sid}))

            # errors come back as tool results the model can read
            bad = await session.call_tool("get_status", {"sessionId": "nope"})
            assert bad.is_error and json.loads(bad.content[0].text)["code"] == "SESSION_NOT_FOUND"
            bad = await session.call_tool("create_session", {"workDir": "/etc", "bogus": 1})
            assert bad.is_error and "unknown argument 'bogus'" in bad.content[0].text
            bad = await session.call_tool("create_session", {"workDir": "/etc"})
            assert bad.is_error and json.loads(bad.content[0].text)["code"] == "INVALID_WORKDIR"

            # verification: the project's checks, pass and fail both answered as results
            (workdir / "Makefile").write_text("build:\n\t@echo built\ntest:\n\t@echo 'E   boom'; exit 1\n")
            verdict = await session.call_tool("verify_session", {"sessionId": sid})
            assert not verdict.is_error
            body = json.loads(verdict.content[0].text)
            assert body["ok"] is False and "boom" in body["steps"][1]["output"]
            body = _data(await session.call_tool("verify_session", {"sessionId": sid, "criticalOnly": True}))
            assert body["ok"] is True and [s["name"] for s in body["steps"]] == ["build"]

            res = await session.read_resource("aegis://sessions")
            assert json.loads(res.contents[0].text)["total"] == 1
            prompt = await session.get_prompt("debug_session", {"sessionId": sid})
            assert sid in prompt.messages[0].content.text

            _data(await session.call_tool("kill_session", {"sessionId": sid}))
            assert (await daemon.http.get(f"/v1/sessions/{sid}")).json()["status"] == "killed"


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
