"""Sessions end to end inside one daemon (in-process, real fake-agent child processes, real HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aegisd.core.states import State

from .conftest import DaemonHandle, agent_env, wait_dead


async def test_create_prompt_read(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, name="first", prompt="say:hello there")
    assert s["workDir"] == str(workdir.resolve())
    assert s["name"] == "first"
    assert s["reused"] is False
    sid = s["id"]
    await daemon.wait_event(sid, "turn")
    await daemon.wait_status(sid, State.IDLE)
    r = await daemon.http.get(f"/v1/sessions/{sid}/read")
    assert r.status_code == 200
    body = r.json()
    texts = [(m["role"], m["contentType"], m["text"]) for m in body["messages"]]
    assert ("user", "text", "say:hello there") in texts
    assert ("assistant", "text", "hello there") in texts
    assert body["status"] == "idle"
    # read returns only what is new
    r2 = await daemon.http.get(f"/v1/sessions/{sid}/read")
    assert r2.json()["messages"] == []


async def test_chunks_are_merged(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="chunks:5:abcdefghijklmnopqrstuvwxyz")
    await daemon.wait_event(s["id"], "turn")
    r = await daemon.http.get(f"/v1/sessions/{s['id']}/transcript")
    assistant = [m for m in r.json()["messages"] if m["role"] == "assistant" and m["contentType"] == "text"]
    assert [m["text"] for m in assistant] == ["abcdefghijklmnopqrstuvwxyz"]


async def test_permission_approve_picks_allow_once(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="tool:execute:Run touch:touch x")
    sid = s["id"]
    await daemon.wait_status(sid, State.PERMISSION_PROMPT)
    got = (await daemon.http.get(f"/v1/sessions/{sid}")).json()
    assert got["status"] == "permission_prompt"
    pending = got["pendingPermission"]
    assert pending["toolTitle"] == "Run touch"
    assert pending["toolKind"] == "execute"
    assert pending["rawInput"] == {"command": "touch x"}
    assert {o["kind"] for o in pending["options"]} >= {"allow_once", "allow_always", "reject_once"}
    assert "approve" in got["actionHints"]
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve")
    assert r.status_code == 200, r.text
    assert r.json()["optionId"] == "allow"  # allow_once, although allow_always is listed first
    await daemon.wait_event(sid, "turn")
    msgs = (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    assert any(m["text"] == "permission: allow" for m in msgs)
    assert any(m["contentType"] == "tool_result" and "ran touch x" in m["text"] for m in msgs)


async def test_reject_and_nothing_pending_is_409(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir)
    sid = s["id"]
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve")
    assert r.status_code == 409
    assert r.json()["code"] == "NO_PENDING_PERMISSION"
    assert set(r.json()) >= {"error", "code", "message", "requestId"}
    r = await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "tool:edit:Edit file:a.txt"})
    assert r.json()["delivered"] is True
    await daemon.wait_status(sid, State.PERMISSION_PROMPT)
    r = await daemon.http.post(f"/v1/sessions/{sid}/reject")
    assert r.json()["optionId"] == "reject"
    await daemon.wait_event(sid, "turn")
    msgs = (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    assert any(m["text"] == "permission: reject" for m in msgs)
    assert any(m["contentType"] == "tool_error" for m in msgs)


async def test_bypass_permissions_auto_approves(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, permissionMode="dontAsk", prompt="tool:execute:Run:rm -rf x")
    ev = await daemon.wait_event(s["id"], "turn")
    assert ev.data["stopReason"] == "end_turn"
    # dontAsk is offered by the fake agent: passed natively, and the daemon still never asks
    rec = daemon.manager.records[s["id"]]
    assert rec.currentMode == "dontAsk"
    msgs = (await daemon.http.get(f"/v1/sessions/{s['id']}/transcript?limit=200")).json()["messages"]
    assert any(m["text"] == "permission: reject" for m in msgs)


async def test_daemon_applies_mode_the_agent_lacks(daemon_factory: Any, tmp_path: Path, workdir: Path) -> None:
    from .conftest import agent_env

    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODES="default,plan"))
    s = await d.create(workdir, permissionMode="bypassPermissions", prompt="tool:execute:Run:make")
    ev = await d.wait_event(s["id"], "turn")
    assert ev.data["stopReason"] == "end_turn"
    msgs = (await d.http.get(f"/v1/sessions/{s['id']}/transcript?limit=200")).json()["messages"]
    assert any(m["text"] == "permission: allow" for m in msgs)
    assert any(m["contentType"] == "permission_decision" and "auto-approved" in m["text"] for m in msgs)


async def test_interrupt_cancels_turn_and_open_permission(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="tool:execute:Run:sleep 100;say:after")
    sid = s["id"]
    await daemon.wait_status(sid, State.PERMISSION_PROMPT)
    r = await daemon.http.post(f"/v1/sessions/{sid}/interrupt")
    assert r.json() == {"ok": True, "interrupted": True}
    ev = await daemon.wait_event(sid, "turn")
    assert ev.data["stopReason"] == "cancelled"
    await daemon.wait_status(sid, State.IDLE)
    msgs = (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    assert not any(m["text"] == "after" for m in msgs)
    assert daemon.manager.records[sid].pendingPermission is None


async def test_long_turn_honours_cancel(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="wait-for-cancel")
    sid = s["id"]
    await daemon.wait_status(sid, State.RUNNING)
    await daemon.http.post(f"/v1/sessions/{sid}/interrupt")
    ev = await daemon.wait_event(sid, "turn")
    assert ev.data["stopReason"] == "cancelled"


async def test_send_while_running_is_queued(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="sleep:300")
    sid = s["id"]
    r = await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:second"})
    assert r.json()["queued"] is True and r.json()["delivered"] is False
    await daemon.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 2)
    msgs = (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    assert [m["text"] for m in msgs if m["role"] == "user"] == ["sleep:300", "say:second"]


async def test_crash_mid_turn_crashes_only_that_session(daemon: DaemonHandle, workdir: Path) -> None:
    a = await daemon.create(workdir, prompt="say:a", reuse=False)
    b = await daemon.create(workdir, prompt="crash:7", reuse=False)
    await daemon.wait_status(b["id"], State.CRASHED)
    rec = daemon.manager.records[b["id"]]
    assert rec.crash is not None and rec.crash.exitCode == 7
    assert "agent_exited" in rec.crash.reason
    assert rec.crash.stderrTail and "fake-acp-agent started" in rec.crash.stderrTail
    # the other session and the daemon are fine
    r = await daemon.http.post(f"/v1/sessions/{a['id']}/send", json={"text": "say:still here"})
    assert r.status_code == 200
    await daemon.wait_event(a["id"], "turn", match=lambda e: e.data["turn"] == 2)
    r = await daemon.http.post(f"/v1/sessions/{b['id']}/send", json={"text": "x"})
    assert r.status_code == 409 and r.json()["code"] == "SESSION_NOT_LIVE"


async def test_garbage_output_is_protocol_error(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="garbage")
    await daemon.wait_status(s["id"], State.CRASHED)
    rec = daemon.manager.records[s["id"]]
    assert rec.crash and rec.crash.reason.startswith("acp_protocol_error")
    assert "not a JSON-RPC message" in rec.crash.reason


async def test_response_to_unknown_id_is_protocol_error(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="badid")
    await daemon.wait_status(s["id"], State.CRASHED)
    assert "unknown request id" in daemon.manager.records[s["id"]].crash.reason  # type: ignore[union-attr]


async def test_oversized_line_is_protocol_error(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(maxLineBytes=10_000)
    s = await d.create(workdir, prompt="bigline:50000")
    await d.wait_status(s["id"], State.CRASHED)
    assert "limit 10000" in d.manager.records[s["id"]].crash.reason or \
        "longer than 10000" in d.manager.records[s["id"]].crash.reason


async def test_unknown_agent_request_gets_error(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="unknown-request")
    await daemon.wait_event(s["id"], "turn")
    msgs = (await daemon.http.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]
    assert any(m["text"] == "unknown-request: error -32601" for m in msgs)


async def test_hang_on_initialize_crashes_with_timeout(daemon_factory: Any, tmp_path: Path,
                                                       workdir: Path) -> None:
    from .conftest import agent_env

    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODE="hang-initialize"), acpInitTimeoutMs=500)
    s = await d.create(workdir)
    await d.wait_status(s["id"], State.CRASHED)
    assert d.manager.records[s["id"]].crash.reason.startswith("acp_start_timeout")  # type: ignore[union-attr]


async def test_exit_before_initialize(daemon_factory: Any, tmp_path: Path, workdir: Path) -> None:
    from .conftest import agent_env

    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODE="exit-before-initialize"))
    s = await d.create(workdir)
    assert s["status"] == "crashed"
    crash = d.manager.records[s["id"]].crash
    assert crash is not None and crash.exitCode == 42


async def test_missing_agent_binary(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(agentCommand=["/nonexistent/agent-binary"])
    s = await d.create(workdir)
    assert s["status"] == "crashed"
    assert "agent_spawn_failed" in s["crash"]["reason"]


async def test_kill_and_close(daemon: DaemonHandle, workdir: Path) -> None:
    a = await daemon.create(workdir, reuse=False)
    pid = daemon.manager.records[a["id"]].pid
    r = await daemon.http.delete(f"/v1/sessions/{a['id']}")
    assert r.status_code == 200 and r.json()["ok"] is True
    assert daemon.manager.records[a["id"]].status == State.KILLED
    from .conftest import wait_dead
    assert pid is not None
    await wait_dead([pid])  # the agent's stop continues after the answer (tests/test_limits.py)
    r = await daemon.http.delete(f"/v1/sessions/{a['id']}")
    assert r.status_code == 409
    b = await daemon.create(workdir, reuse=False)
    r = await daemon.http.post(f"/v1/sessions/{b['id']}/close")
    assert r.json()["status"] == "completed"
    # terminal sessions stay listed
    listed = (await daemon.http.get("/v1/sessions")).json()["sessions"]
    assert {x["id"] for x in listed} >= {a["id"], b["id"]}


async def test_reuse_idle_session_same_workdir(daemon: DaemonHandle, workdir: Path) -> None:
    a = await daemon.create(workdir)
    await daemon.wait_status(a["id"], State.IDLE)
    r = await daemon.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "say:again"})
    assert r.status_code == 200
    assert r.json()["reused"] is True and r.json()["id"] == a["id"]


async def test_two_sessions_never_see_each_others_updates(daemon: DaemonHandle, tmp_path: Path) -> None:
    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    w1.mkdir()
    w2.mkdir()
    a = await daemon.create(w1, prompt="chunks:20:" + "A" * 200)
    b = await daemon.create(w2, prompt="chunks:20:" + "B" * 200)
    await daemon.wait_event(a["id"], "turn")
    await daemon.wait_event(b["id"], "turn")
    ta = (await daemon.http.get(f"/v1/sessions/{a['id']}/transcript")).json()["messages"]
    tb = (await daemon.http.get(f"/v1/sessions/{b['id']}/transcript")).json()["messages"]
    assert all("B" not in m["text"] for m in ta if m["role"] == "assistant")
    assert all("A" not in m["text"] for m in tb if m["role"] == "assistant")
    assert any("A" * 200 == m["text"] for m in ta)


async def test_stall_detection(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, stallThresholdMs=1000, prompt="sleep:1800;say:woke")
    ev = await daemon.wait_event(s["id"], "stall", timeout=10)
    assert ev.data["stallType"] == "no_activity"
    await daemon.wait_status(s["id"], State.RUNNING, State.IDLE)
    await daemon.wait_event(s["id"], "turn")


async def test_event_ids_monotonic(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="say:x")
    await daemon.wait_event(s["id"], "turn")
    sub = await daemon.daemon.bus.subscribe(session_id=s["id"], after_id=0)
    ids = [e.id for e in sub._replay]
    sub.close()
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and len(ids) >= 5
    kinds = [e.event for e in sub._replay]
    assert kinds[0] == "created"
    assert "status" in kinds and "message" in kinds


async def test_prompt_timeout_cancels_silent_turn(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(acpPromptTimeoutMs=800)
    s = await d.create(workdir, prompt="sleep:5000;say:late")
    ev = await d.wait_event(s["id"], "turn", timeout=10)
    assert ev.data["stopReason"] == "timeout"
    msgs = (await d.http.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]
    assert any(m["contentType"] == "error" and "timed out" in m["text"] for m in msgs)
    assert d.manager.records[s["id"]].status == State.IDLE


async def test_agent_ignoring_cancel_after_timeout_crashes(daemon_factory: Any, workdir: Path,
                                                           monkeypatch: Any) -> None:
    from aegisd.core import machine as _machine

    monkeypatch.setattr(_machine, "CANCEL_GRACE_S", 0.5)
    d = await daemon_factory(acpPromptTimeoutMs=500, killGraceMs=300)
    s = await d.create(workdir, prompt="hang:60000")
    await d.wait_status(s["id"], State.CRASHED, timeout=10)
    crash = d.manager.records[s["id"]].crash
    assert crash is not None and crash.reason.startswith("acp_request_timeout")


async def test_agent_exit_zero_while_idle_completes(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir)
    runner = daemon.manager.runners[s["id"]]
    assert runner._proc is not None and runner._proc.proc.stdin is not None
    await runner._proc.proc.stdin.aclose()  # the fake agent exits 0 on stdin EOF
    await daemon.wait_status(s["id"], State.COMPLETED)
    assert daemon.manager.records[s["id"]].endReason == "agent_exited"


async def test_capacity_limit(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(maxSessions=1)
    await d.create(workdir, reuse=False)
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
    assert r.status_code == 429 and r.json()["code"] == "CAPACITY_EXCEEDED"


async def test_permission_profile_enforced(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, permissionMode="bypassPermissions")
    sid = s["id"]
    r = await daemon.http.put(f"/v1/sessions/{sid}/permission-profile", json={
        "defaultBehavior": "ask", "rules": [{"tool": "execute", "behavior": "deny", "pattern": "rm *"},
                                            {"tool": "execute", "behavior": "allow", "pattern": "make*"}]})
    assert r.status_code == 200 and r.json()["permissionProfile"]["rules"][0]["behavior"] == "deny"
    assert (await daemon.http.get(f"/v1/sessions/{sid}/permission-profile")).json()["permissionProfile"]
    # a deny rule wins even in bypassPermissions; an allow rule approves; the default asks a person
    await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "tool:execute:Run:rm -rf x;"
                                                                     "tool:execute:Run:make all;tool:edit:Edit:f"})
    await daemon.wait_status(sid, State.PERMISSION_PROMPT)
    msgs = (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    texts = [m["text"] for m in msgs]
    assert "permission: reject" in texts and "permission: allow" in texts
    assert any("auto-rejected (permission profile)" in t for t in texts)
    await daemon.http.post(f"/v1/sessions/{sid}/approve")
    await daemon.wait_event(sid, "turn")
    r = await daemon.http.put(f"/v1/sessions/{sid}/permission-profile", json={"defaultBehavior": "maybe"})
    assert r.status_code == 400
    # the TypeScript client's spec sends {profile: ...}: an alias of defaultBehavior, with no rules
    r = await daemon.http.put(f"/v1/sessions/{sid}/permission-profile", json={"profile": "deny"})
    assert r.status_code == 200 and r.json()["permissionProfile"] == {"defaultBehavior": "deny"}
    r = await daemon.http.put(f"/v1/sessions/{sid}/permission-profile", json={"profile": "deny",
                                                                           "defaultBehavior": "allow"})
    assert r.status_code == 400 and "alias" in r.json()["error"]


async def test_legacy_permissions_are_enforced(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    """The original stored PUT /permissions rules and never applied them; here they become the session's
    profile, and what no rule matches is left to the permission mode (applied by the daemon: this agent
    has no modes of its own)."""
    daemon = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODES=""))
    s = await daemon.create(workdir, permissionMode="acceptEdits")
    sid = s["id"]
    url = f"/v1/sessions/{sid}/permissions"
    assert (await daemon.http.get(url)).json() == {"permissionPolicy": [], "permissionProfile": None}
    rules = [{"source": "userSettings", "ruleBehavior": "deny", "toolName": "Edit", "commandPattern": "*.env"},
             {"source": "api", "ruleBehavior": "allow", "toolName": "Run", "commandPattern": "make*"}]
    r = await daemon.http.put(url, json=rules)  # a bare array, as the original takes it
    assert r.status_code == 200, r.text
    assert r.json()["permissionPolicy"] == rules
    assert r.json()["permissionProfile"]["defaultBehavior"] == "mode"
    assert (await daemon.http.get(url)).json()["permissionPolicy"] == rules
    # deny rule; allow rule; no rule -> acceptEdits allows the edit; no rule -> acceptEdits asks for execute
    await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "tool:edit:Edit:.env;tool:execute:Run:make;"
                                                                     "tool:edit:Edit:a.txt;tool:execute:Run:ls"})
    await daemon.wait_status(sid, State.PERMISSION_PROMPT)
    texts = [m["text"] for m in (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]]
    assert [t for t in texts if t.startswith("permission: ")] == [
        "permission: reject", "permission: allow", "permission: allow"]
    assert any("auto-approved (acceptEdits)" in t for t in texts)
    assert (await daemon.http.get(f"/v1/sessions/{sid}")).json()["pendingPermission"]["toolTitle"] == "Run"
    await daemon.http.post(f"/v1/sessions/{sid}/approve")
    await daemon.wait_event(sid, "turn")
    # bad input: a 4xx envelope, and the stored rules are kept
    for bad in ([{"ruleBehavior": "maybe"}], [{"toolName": "x"}], {"rules": "no"}, "text", [{"ruleBehavior": "allow",
                                                                                          "extra": 1}]):
        r = await daemon.http.put(url, json=bad)
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", (bad, r.text)
    assert (await daemon.http.get(url)).json()["permissionPolicy"] == rules
    assert (await daemon.http.get("/v1/sessions/nope/permissions")).status_code == 404
    # the new-style profile replaces the legacy rules
    await daemon.http.put(f"/v1/sessions/{sid}/permission-profile", json={"defaultBehavior": "deny"})
    assert (await daemon.http.get(url)).json()["permissionPolicy"] == []


async def test_mcp_servers_for_a_session(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(mcpServers={"tools": {"command": "/bin/true", "args": ["x"], "env": {"A": "1"}}})
    s = await d.create(workdir, mcpServers=["aegis", "tools"], prompt="mcp-servers", reuse=False)
    assert s["mcpServers"] == ["aegis", "tools"]
    await d.wait_event(s["id"], "turn")
    said = [m["text"] for m in (await d.http.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]]
    assert "mcp: aegis,tools" in said  # both reached the agent in session/new
    specs = {m["name"]: m for m in d.daemon.manager.mcp_specs(d.daemon.manager.records[s["id"]])}
    assert specs["aegis"]["args"] == ["-m", "aegisctl", "mcp"]
    assert {"name": "AEGIS_SOCKET", "value": str(d.daemon.config.socket_path)} in specs["aegis"]["env"]
    assert specs["tools"] == {"name": "tools", "command": "/bin/true", "args": ["x"],
                              "env": [{"name": "A", "value": "1"}]}
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "mcpServers": ["nope"]})
    assert r.status_code == 400 and "unknown MCP server 'nope'" in r.json()["message"]
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "mcpServers": "aegis"})
    assert r.status_code == 400


async def test_idle_sessions_close_after_idle_timeout(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(idleTimeoutMs=400)
    s = await d.create(workdir, prompt="say:done", reuse=False)
    ended = await d.wait_event(s["id"], "ended", timeout=10)
    assert ended.data["reason"] == "idle_timeout" and ended.data["status"] == "completed"
    assert d.manager.records[s["id"]].endReason == "idle_timeout"
    await wait_dead([s["pid"]])  # its agent is gone
    # a session at work is not idle: a turn longer than the timeout runs to its end
    busy = await d.create(workdir, prompt="sleep:900;say:still here", reuse=False)
    turn = await d.wait_event(busy["id"], "turn", timeout=10)
    assert turn.data["stopReason"] == "end_turn"


def test_idle_timeout_config(tmp_path: Path) -> None:
    from aegisd.core.config import load_config
    from aegisd.core.errors import ValidationError

    assert load_config(env={}, cwd=tmp_path).idleTimeoutMs == 1_800_000  # 30 minutes
    assert load_config(env={"AEGIS_IDLE_TIMEOUT_MS": "0"}, cwd=tmp_path).idleTimeoutMs == 0  # never
    with pytest.raises(ValidationError, match="idleTimeoutMs"):
        load_config(env={"AEGIS_IDLE_TIMEOUT_MS": "-1"}, cwd=tmp_path)


async def test_names_come_from_the_first_prompt_and_are_unique(daemon: DaemonHandle, workdir: Path) -> None:
    prompt = "Analyze this project and list the main technologies."
    a = await daemon.create(workdir, prompt=prompt, reuse=False)
    b = await daemon.create(workdir, prompt=prompt, reuse=False)
    c = await daemon.create(workdir, reuse=False)
    named = await daemon.create(workdir, prompt=prompt, name="mine", reuse=False)
    assert a["name"] == "cc-analyze-this-projec" and b["name"] == "cc-analyze-this-projec-2"
    assert c["name"] == f"session-{c['id'][:8]}" and named["name"] == "mine"
    odd = await daemon.create(workdir, prompt="!!! ???", reuse=False)
    assert odd["name"] == "cc-session"


async def test_short_prefixes_are_too_short_not_missing(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, reuse=False)
    r = await daemon.http.get(f"/v1/sessions/{s['id'][:3]}")
    assert r.status_code == 400 and "too short" in r.json()["message"]
    assert (await daemon.http.get(f"/v1/sessions/{s['id'][:4]}")).json()["id"] == s["id"]
