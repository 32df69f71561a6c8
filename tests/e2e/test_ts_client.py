"""The original Aegis TypeScript client (`@onestepat4time/aegis-client`) against this daemon.

The client is not published on the npm registry, so this test runs only where a built copy is named by
AEGIS_TEST_TS_CLIENT (the path of its `dist/index.js`; docs/clients.md says how to build one). It drives the
client through tests/e2e/ts_client_driver.mjs, one call per line, so the test can wait on daemon events
between calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from ..conftest import DaemonHandle

CLIENT = os.environ.get("AEGIS_TEST_TS_CLIENT", "")
DRIVER = Path(__file__).with_name("ts_client_driver.mjs")

pytestmark = [
    pytest.mark.skipif(not CLIENT, reason="AEGIS_TEST_TS_CLIENT unset: the TypeScript client is not on npm "
                                          "(see docs/clients.md for building it)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="node not installed"),
]


class TsClient:
    def __init__(self, base_url: str, token: str = "") -> None:
        args = ["node", str(DRIVER), CLIENT, base_url] + ([token] if token else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    async def _send(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        stdout = self.proc.stdout
        with trio.fail_after(20):
            line = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
        assert line, f"driver exited ({self.proc.poll()})"
        return json.loads(line)  # type: ignore[no-any-return]

    async def call(self, method: str, *args: Any) -> Any:
        out = await self._send({"call": method, "args": list(args)})
        assert out["ok"], f"{method}: {out}"
        return out.get("result")

    async def call_err(self, method: str, *args: Any) -> str:
        out = await self._send({"call": method, "args": list(args)})
        assert not out["ok"], f"{method} should fail: {out}"
        return str(out["error"])

    async def sdk(self, fn: str, **options: Any) -> dict[str, Any]:
        return await self._send({"sdk": fn, "options": options})

    def close(self) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


async def test_ts_client_class_api(daemon_factory: Any, workdir: Path) -> None:
    daemon: DaemonHandle = await daemon_factory(memoryBridge={"enabled": True})
    ts = TsClient(daemon.daemon.http_url)
    try:
        s = await ts.call("createSession", {"workDir": str(workdir), "name": "from-ts", "prompt": "say:hello ts"})
        sid = s["id"]
        assert s["name"] == "from-ts" and s["promptDelivery"]["delivered"] is True
        await daemon.wait_event(sid, "turn")
        assert [x["id"] for x in await ts.call("listSessions", {"workDir": str(workdir)})] == [sid]
        assert (await ts.call("getSession", sid))["status"] == "idle"
        assert (await ts.call("getHealth", sid))["alive"] is True
        msgs = (await ts.call("getTranscript", sid))["messages"]
        assert [m["text"] for m in msgs if m["role"] == "assistant"] == ["hello ts"]
        assert "hello ts" in (await ts.call("capturePane", sid))["pane"]
        assert (await ts.call("getSessionMetrics", sid))["turns"] == 1
        assert (await ts.call("getSessionSummary", sid))["status"] == "idle"
        assert "aggregated" in await ts.call("getSessionLatency", sid)

        await ts.call("sendMessage", sid, "tool:execute:Run:ls")
        await daemon.wait_event(sid, "permission.requested")
        assert (await ts.call("approvePermission", sid)) == {"ok": True}
        await daemon.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 2)
        await ts.call("sendMessage", sid, "tool:execute:Run:rm")
        ev = await daemon.wait_event(sid, "permission.requested", match=lambda e: "rm" in str(e.data))
        await ts.call("rejectPermission", sid)
        await daemon.wait_event(sid, "permission.decided", after_id=ev.id,
                                match=lambda e: e.data.get("decision") == "deny")
        await daemon.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 3)
        await ts.call("sendCommand", sid, "/review")
        await daemon.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 4)
        # the fake agent offers /review and /test only: an unknown command is refused with the agent's list
        assert "/review" in await ts.call_err("sendCommand", sid, "/nope")

        await ts.call("sendMessage", sid, "wait-for-cancel")
        await daemon.wait_status(sid, "running")
        await ts.call("interruptSession", sid)
        await daemon.wait_status(sid, "idle")
        await ts.call("escapeSession", sid)

        batch = await ts.call("batchCreateSessions", [{"workDir": str(workdir), "name": "b1"},
                                                      {"workDir": str(workdir), "name": "b2"}])
        assert batch["created"] == 2 and batch["failed"] == 0
        stats = await ts.call("getSessionStats")
        assert stats["active"] == 3 and stats["totalCreated"] == 3
        assert (await ts.call("getGlobalMetrics"))["sessions"]["total_created"] == 3

        pipe = await ts.call("createPipeline", {"name": "p", "workDir": str(workdir),
                                                "stages": [{"name": "a", "prompt": "say:stage a"}]})
        assert [p["id"] for p in await ts.call("listPipelines")] == [pipe["id"]]

        await ts.call("setMemory", "notes/ts", "remember me")
        # the server answers {entry} as the original does; the client types it as a bare entry
        assert (await ts.call("getMemory", "notes/ts"))["entry"]["value"] == "remember me"
        await ts.call("deleteMemory", "notes/ts")
        assert "no memory entry" in await ts.call_err("getMemory", "notes/ts")

        audit = await ts.call("getAuditLogs", {"sessionId": sid})
        assert {"session.create", "permission.approve", "permission.reject"} <= {r["action"] for r in audit["records"]}

        assert (await ts.call("killSession", sid)) == {"ok": True}
        assert (await ts.call("getSession", sid))["status"] == "killed"
        assert "no route" in await ts.call_err("sendBash", sid, "ls")  # typing into a terminal: tmux only
        assert "no route" in await ts.call_err("getSwarm")
        assert "no-such-session" in await ts.call_err("getSession", "no-such-session")
        # the client's own bug: getServerHealth() ignores the base URL and asks localhost:9100
        assert "fetch failed" in await ts.call_err("getServerHealth")
    finally:
        ts.close()


async def test_ts_client_generated_functions(daemon: DaemonHandle, workdir: Path) -> None:
    ts = TsClient(daemon.daemon.http_url)
    try:
        created = await ts.sdk("createSession", body={"workDir": str(workdir), "prompt": "say:one"})
        assert created["ok"] and created["status"] == 201
        sid = created["result"]["id"]
        await daemon.wait_event(sid, "turn")
        ok_calls: dict[str, dict[str, Any]] = {
            "getHealthAlias": {}, "listSessionsAlias": {}, "getSessionsHealth": {}, "listSessionHistory": {},
            "getSessionTranscript": {"path": {"id": sid}}, "getTranscriptCursor": {"path": {"id": sid}},
            "listSessionTools": {"path": {"id": sid}}, "getChildren": {"path": {"id": sid}},
            "getPermissionProfile": {"path": {"id": sid}}, "getPermissionPolicy": {"path": {"id": sid}},
            "listTools": {}, "getDiagnostics": {}, "getDeadLetterQueue": {}, "getChannelHealth": {},
            "listTemplates": {}, "getV2Status": {}, "getAnalyticsCosts": {}, "getAuditLog": {}, "listApiKeys": {},
            "negotiateHandshake": {"body": {"protocolVersion": "1"}}, "createSseToken": {},
            "spawnChild": {"path": {"id": sid}, "body": {"name": "kid"}},
            "forkSession": {"path": {"id": sid}, "body": {"name": "fork"}},
            "createTemplate": {"body": {"name": "t1", "workDir": str(workdir)}},
            "updatePermissionProfile": {"path": {"id": sid}, "body": {"profile": "ask"}},
            "getAlertStats": {}, "sendTestAlert": {}, "getAnalyticsRateLimits": {},
        }
        results = {fn: await ts.sdk(fn, **opts) for fn, opts in ok_calls.items()}
        failed = {fn: r for fn, r in results.items() if not r["ok"]}
        assert failed == {}
        assert results["getHealthAlias"]["result"]["status"] == "ok"
        assert sid in results["getSessionsHealth"]["result"]
        assert results["spawnChild"]["result"]["parentId"] == sid
        assert results["forkSession"]["result"]["forkedFrom"] == sid
        assert results["createSseToken"]["result"]["token"].startswith("sse_")
        assert results["updatePermissionProfile"]["result"]["permissionProfile"]["defaultBehavior"] == "ask"
        assert results["negotiateHandshake"]["result"]["compatible"] is True
        assert results["sendTestAlert"]["result"]["sent"] is False  # no alert webhooks configured
        assert "session_failure" in results["getAlertStats"]["result"]["trackers"]
        assert results["getAnalyticsRateLimits"]["result"]["perKey"] == []

        # answered with an error envelope (never a 5xx): no question is pending; cloud metadata is off limits
        answer = await ts.sdk("answerSessionQuestion", path={"id": sid}, body={"questionId": "q", "answer": "a"})
        assert answer["status"] == 409 and answer["error"]["code"] == "CONFLICT"
        shot = await ts.sdk("takeScreenshot", path={"id": sid}, body={"url": "http://169.254.169.254/"})
        assert shot["status"] == 400 and "link-local" in shot["error"]["error"]
        # routes of the original that have no ACP equivalent, or only exist in its spec
        verify = await ts.sdk("verifySession", path={"id": sid})  # an empty workDir: nothing to check
        assert verify["status"] == 422 and "nothing to verify" in verify["error"]["summary"]
        for fn, opts in {"sendBash": {"path": {"id": sid},
                         "body": {"command": "ls"}}, "getSwarmStatus": {}, "listModelTiers": {},
                         "routeTask": {"body": {"task": "x"}}}.items():
            r = await ts.sdk(fn, **opts)
            assert r["status"] == 404 and r["error"]["code"] == "NOT_FOUND", (fn, r)
    finally:
        ts.close()
