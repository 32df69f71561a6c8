#!/usr/bin/env python3
"""An orchestrating agent's tool: drives Aegis through `ag mcp` (the official MCP SDK client), from inside a
session's process tree. Run by the fake agent's `sh:` directive (tests/test_security_agent.py).

    agent_mcp_probe.py SOCKET WORKDIR OWN_SESSION_ID

Creates a worker session that asks for a permission, waits for it, lists the pending requests it sees,
approves it, tries to approve its own session's prompt, sets the worker's permission mode and tries its own,
lists what it sees and the events it may follow; prints one JSON line with what happened."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


def _data(result: Any) -> Any:
    return {"error": result.is_error, "body": json.loads(result.content[0].text)}


async def main(sock: str, workdir: str, own: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "aegisctl", "mcp"],
                                   env={"AEGIS_SOCKET": sock, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                        "HOME": workdir})
    out: dict[str, Any] = {}
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            child = _data(await session.call_tool("create_session", {
                "workDir": workdir, "name": "worker", "prompt": "tool:execute:Run:make"}))
            out["create"] = child
            cid = child["body"]["id"]
            out["wait"] = _data(await session.call_tool("wait_for_session", {"sessionId": cid, "timeoutSeconds": 20}))
            out["info"] = _data(await session.call_tool("server_info", {}))
            out["whoami"] = _data(await session.call_tool("whoami", {}))
            out["pending"] = _data(await session.call_tool("list_pending_permissions", {}))
            out["approveChild"] = _data(await session.call_tool("approve_permission", {"sessionId": cid}))
            out["approveOwn"] = _data(await session.call_tool("approve_permission", {"sessionId": own}))
            out["modeChild"] = _data(await session.call_tool("set_permission_mode", {"sessionId": cid,
                                                                                     "mode": "acceptEdits"}))
            out["modeOwn"] = _data(await session.call_tool("set_permission_mode", {"sessionId": own,
                                                                                   "mode": "bypassPermissions"}))
            out["list"] = _data(await session.call_tool("list_sessions", {}))
            out["events"] = _data(await session.call_tool("follow_events", {"afterId": 0, "timeoutSeconds": 1,
                                                                            "limit": 1000}))
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
