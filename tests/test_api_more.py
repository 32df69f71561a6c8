"""The rest of the session API and observability endpoints, over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from .conftest import DaemonHandle, agent_env


async def test_session_insights(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    s = await daemon.create(workdir, prompt="toolauto:read:Read:a.txt;tool:execute:Run:make")
    sid = s["id"]
    await daemon.wait_event(sid, "permission.requested")
    await h.post(f"/v1/sessions/{sid}/approve")
    await daemon.wait_event(sid, "turn")
    m = (await h.get(f"/v1/sessions/{sid}/metrics")).json()
    assert m["toolCalls"] == 2 and m["approvals"] == 1 and m["turns"] == 1
    assert m["tokenUsage"]["inputTokens"] == 10 and m["tokenUsage"]["estimatedCostUsd"] > 0
    lat = (await h.get(f"/v1/sessions/{sid}/latency")).json()
    assert lat["aggregated"]["permission_response_ms"]["count"] == 1
    tools = (await h.get(f"/v1/sessions/{sid}/tools")).json()
    assert tools["totalCalls"] == 2 and {t["name"] for t in tools["tools"]} == {"Read", "Run"}
    summ = (await h.get(f"/v1/sessions/{sid}/summary")).json()
    assert summ["status"] == "idle" and summ["messages"][0]["text"].startswith("toolauto")
    pane = (await h.get(f"/v1/sessions/{sid}/pane")).json()
    assert "> toolauto" in pane["pane"] and "[tool_use] Run" in pane["pane"]
    stats = (await h.get("/v1/sessions/stats")).json()
    assert stats["active"] == 1 and stats["byStatus"] == {"idle": 1}
    bulk = (await h.get("/v1/sessions/health")).json()
    assert bulk[sid]["alive"] is True


async def test_spawn_children_command_batch(daemon: DaemonHandle, workdir: Path, tmp_path: Path) -> None:
    h = daemon.http
    parent = await daemon.create(workdir, name="parent")
    r = await h.post(f"/v1/sessions/{parent['id']}/spawn", json={"prompt": "say:child here"})
    assert r.status_code == 201
    child = r.json()
    assert child["parentId"] == parent["id"] and child["workDir"] == parent["workDir"]
    kids = (await h.get(f"/v1/sessions/{parent['id']}/children")).json()["children"]
    assert [k["id"] for k in kids] == [child["id"]]
    r = await h.post(f"/v1/sessions/{parent['id']}/command", json={"command": "review"})
    assert r.status_code == 200 and r.json()["ok"] is True
    await daemon.wait_event(parent["id"], "turn")
    msgs = (await h.get(f"/v1/sessions/{parent['id']}/transcript")).json()["messages"]
    assert msgs[0]["text"] == "/review"
    r = await h.post(f"/v1/sessions/{parent['id']}/command", json={"command": "/nonexistent"})
    assert r.status_code == 400 and "/review" in r.json()["message"]
    r = await h.post("/v1/sessions/batch", json={"sessions": [
        {"workDir": str(workdir), "name": "b1"}, {"workDir": "/etc"}, {"workDir": str(workdir), "name": "b2"}]})
    body = r.json()
    assert r.status_code == 201 and body["created"] == 2 and body["failed"] == 1
    assert body["errors"][0]["code"] == "INVALID_WORKDIR"
    r = await h.request("DELETE", "/v1/sessions/batch", json={"ids": [x["id"] for x in body["sessions"]] + ["nope"]})
    assert r.json() == {"deleted": 2, "notFound": ["nope"], "errors": []}
    r = await h.request("DELETE", "/v1/sessions/batch", json={"status": "idle"})
    assert r.json()["deleted"] >= 1
    assert (await h.get("/v1/sessions/stats")).json()["active"] == 0


async def test_answer_screenshot_and_observability(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    s = await daemon.create(workdir, prompt="say:x")
    await daemon.wait_event(s["id"], "turn")
    r = await h.post(f"/v1/sessions/{s['id']}/answer", json={"questionId": "q1", "answer": "yes"})
    assert r.status_code == 409
    r = await h.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": "http://169.254.169.254/"})
    assert r.status_code == 400 and "link-local" in r.json()["message"]  # more in test_screenshot.py
    m = (await h.get("/v1/metrics")).json()
    assert m["sessions"]["total_created"] == 1 and m["turns"] == 1 and m["prompts"] == 1
    prom = (await h.get("/metrics")).text
    assert 'aegis_sessions{state="idle"} 1' in prom and "aegis_turns_total 1" in prom
    assert 'aegis_turn_duration_ms_bucket{le="+Inf"} 1' in prom
    tools = (await h.get("/v1/tools")).json()
    assert tools["totalTools"] >= 30 and any(t["name"] == "session.create" for t in tools["tools"])
    hs = (await h.post("/v1/handshake", json={"protocolVersion": "1", "clientCapabilities": ["rpc", "x"]})).json()
    assert hs["compatible"] is True and hs["negotiatedCapabilities"] == ["rpc"] and hs["warnings"]
    assert (await h.post("/v1/handshake", json={"protocolVersion": "0"})).status_code == 409
    crash = await daemon.create(workdir, prompt="crash:4", reuse=False)
    await daemon.wait_event(crash["id"], "ended")
    diag = (await h.get("/v1/diagnostics?limit=5")).json()
    assert diag["count"] == 1 and diag["events"][0]["attributes"]["exitCode"] == 4
    assert "aegis_agent_crashes_total 1" in (await h.get("/metrics")).text


async def test_templates(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    r = await h.post("/v1/templates", json={"name": "reviewer", "workDir": str(workdir), "prompt": "say:reviewing",
                                            "permissionMode": "plan"})
    assert r.status_code == 201
    t = r.json()
    assert (await h.get(f"/v1/templates/{t['id']}")).json()["prompt"] == "say:reviewing"
    r = await h.put(f"/v1/templates/{t['id']}", json={"description": "reviews code"})
    assert r.json()["description"] == "reviews code" and r.json()["prompt"] == "say:reviewing"
    s = await daemon.create(workdir, templateId=t["id"], name="from-template")
    assert s["permissionMode"] == "plan" and s["name"] == "from-template"
    await daemon.wait_event(s["id"], "turn")
    msgs = (await h.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]
    assert msgs[0]["text"] == "say:reviewing"
    r = await h.post("/v1/templates", json={"name": "copy", "sessionId": s["id"]})
    assert r.status_code == 201 and r.json()["workDir"] == str(workdir.resolve())
    assert (await h.post("/v1/templates", json={"name": "x"})).status_code == 400
    assert (await h.post("/v1/templates", json={"name": "x", "workDir": "/etc"})).status_code == 400
    assert len((await h.get("/v1/templates")).json()) == 2
    assert (await h.delete(f"/v1/templates/{t['id']}")).json() == {"ok": True}
    assert (await h.get(f"/v1/templates/{t['id']}")).status_code == 404
    assert (await h.post("/v1/sessions", json={"templateId": "nope"})).status_code == 404
    assert (await h.post("/v1/sessions", json={})).status_code == 400


async def test_fork_through_acp_session_fork(daemon: DaemonHandle, workdir: Path) -> None:
    """The fake agent advertises sessionCapabilities.fork: the fork is the agent's own copy of the
    conversation, so the first prompt of the fork is the caller's, not a seeded transcript."""
    s = await daemon.create(workdir, prompt="the answer is 42", permissionMode="plan")
    await daemon.wait_event(s["id"], "turn")
    assert (await daemon.http.get(f"/v1/sessions/{s['id']}")).json()["forkSupported"] is True
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/fork", json={"prompt": "recall", "name": "branch"})
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["forkedFrom"] == s["id"] and f["forkMethod"] == "acp" and f["seededEntries"] == 0
    assert f["name"] == "branch" and f["permissionMode"] == "plan" and f["acpSessionId"] != s["acpSessionId"]
    await daemon.wait_event(f["id"], "turn")
    msgs = (await daemon.http.get(f"/v1/sessions/{f['id']}/transcript")).json()["messages"]
    assert msgs[0]["text"] == "recall"  # nothing seeded
    said = [m["text"] for m in msgs if m["role"] == "assistant" and m["contentType"] == "text"]
    assert said == ["recall: the answer is 42"]  # ...yet the agent remembers the source's turn
    # the source goes on independently
    await daemon.http.post(f"/v1/sessions/{s['id']}/send", json={"text": "recall"})
    await daemon.wait_event(s["id"], "turn", after_id=0, match=lambda e: e.data.get("turn") == 2)
    msgs = (await daemon.http.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]
    said = [m["text"] for m in msgs if m["role"] == "assistant" and m["contentType"] == "text"]
    assert said[-1] == "recall: the answer is 42"  # the fork's turn did not leak into the source


async def test_fork_falls_back_to_the_transcript(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    for fork_env in ("0", "fail"):  # not advertised; advertised but refused by the agent
        d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_FORK=fork_env),
                                 stateDir=str(tmp_path / f"state-{fork_env}"))
        s = await d.create(workdir, prompt="say:the answer is 42", permissionMode="plan", reuse=False)
        await d.wait_event(s["id"], "turn")
        r = await d.http.post(f"/v1/sessions/{s['id']}/fork", json={"prompt": "what was the answer?"})
        assert r.status_code == 201
        f = r.json()
        assert f["forkedFrom"] == s["id"] and f["forkMethod"] == "transcript" and f["seededEntries"] == 2
        assert f["id"] != s["id"] and f["permissionMode"] == "plan" and f["workDir"] == s["workDir"]
        await d.wait_event(f["id"], "turn")
        first = (await d.http.get(f"/v1/sessions/{f['id']}/transcript")).json()["messages"][0]["text"]
        assert "assistant: the answer is 42" in first and first.endswith("what was the answer?")
        d.shutdown.set()
        with trio.fail_after(15):
            await d.done.wait()  # type: ignore[attr-defined]


async def test_memory_bridge(daemon_factory: Any, workdir: Path) -> None:
    off = await daemon_factory()
    assert (await off.http.get("/v1/memory")).status_code == 404
    off.shutdown.set()
    with trio.fail_after(15):
        await off.done.wait()  # type: ignore[attr-defined]
    d = await daemon_factory(memoryBridge={"enabled": True})
    h = d.http
    r = await h.post("/v1/memory", json={"key": "project/stack", "value": "python + trio"})
    assert r.status_code == 200 and r.json()["entry"]["namespace"] == "project"
    await h.post("/v1/memory", json={"key": "user/name", "value": "ada", "ttlSeconds": 60})
    assert (await h.get("/v1/memory/project/stack")).json()["entry"]["value"] == "python + trio"
    assert [e["key"] for e in (await h.get("/v1/memory?prefix=user/")).json()["entries"]] == ["user/name"]
    assert [e["key"] for e in (await h.get("/v1/memories?scope=project")).json()["entries"]] == ["project/stack"]
    assert (await h.get("/v1/memories?scope=galaxy")).status_code == 400
    assert (await h.post("/v1/memory", json={"key": "no-namespace", "value": "x"})).status_code == 400
    assert (await h.post("/v1/memory", json={"key": "a/b", "value": "x" * (100 * 1024 + 1)})).status_code == 413
    s = await d.create(workdir, prompt="say:ok", memoryKeys=["project/stack", "missing/key"])
    await d.wait_event(s["id"], "turn")
    first = (await h.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"][0]["text"]
    assert first.startswith("[Memory context]\nproject/stack: python + trio\n\n") and first.endswith("say:ok")
    r = await h.post(f"/v1/sessions/{s['id']}/memories", json={"key": "note", "value": "remember"})
    assert r.json()["entry"]["key"] == f"session:{s['id']}/note"
    assert len((await h.get(f"/v1/sessions/{s['id']}/memories")).json()["entries"]) == 1
    assert (await h.delete("/v1/memory/project/stack")).json() == {"ok": True}
    assert (await h.get("/v1/memory/project/stack")).status_code == 404


async def test_history_cursor_legacy_list_commands(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory()
    h = d.http
    a = await d.create(workdir, name="a", prompt="say:one;say:two", reuse=False)
    b = await d.create(workdir, name="b", reuse=False)
    await d.wait_event(a["id"], "turn")
    assert (await h.delete(f"/v1/sessions/{b['id']}")).status_code == 200

    hist = (await h.get("/v1/sessions/history")).json()
    rows = {r["id"]: r for r in hist["records"]}
    assert rows[a["id"]]["finalStatus"] == "active" and rows[a["id"]]["source"] == "live+audit"
    assert rows[b["id"]]["finalStatus"] == "killed" and rows[b["id"]]["source"] == "store+audit"
    assert rows[b["id"]]["endedAt"] is not None and hist["pagination"]["total"] == 2
    assert [r["id"] for r in hist["records"]] == [b["id"], a["id"]]  # newest first
    assert [r["id"] for r in (await h.get("/v1/sessions/history?status=killed")).json()["records"]] == [b["id"]]
    assert [r["id"] for r in (await h.get("/v1/sessions/history?status=ended")).json()["records"]] == [b["id"]]
    page = (await h.get("/v1/sessions/history?limit=1&page=2")).json()
    assert [r["id"] for r in page["records"]] == [a["id"]] and page["pagination"]["totalPages"] == 2
    for bad in ("status=weird", "limit=0", "limit=201", "page=x"):
        r = await h.get(f"/v1/sessions/history?{bad}")
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", bad

    # a session only the audit log still knows of (its record is gone): source "audit"
    await d.daemon.store.delete_session(b["id"])
    del d.daemon.manager.records[b["id"]]
    row = {r["id"]: r for r in (await h.get("/v1/sessions/history")).json()["records"]}[b["id"]]
    assert row["source"] == "audit" and row["finalStatus"] == "killed" and row["workDir"] == a["workDir"]

    # stable back-paging of the transcript
    url = f"/v1/sessions/{a['id']}/transcript/cursor"
    full = (await h.get(url + "?limit=200")).json()
    ids = [m["_cursor_id"] for m in full["messages"]]
    assert ids == list(range(1, len(ids) + 1)) and full["has_more"] is False and full["newest_id"] == ids[-1]
    last2 = (await h.get(url + "?limit=2")).json()
    assert [m["_cursor_id"] for m in last2["messages"]] == ids[-2:] and last2["has_more"] is True
    older = (await h.get(url + f"?limit=2&before_id={last2['oldest_id']}")).json()
    assert [m["_cursor_id"] for m in older["messages"]] == ids[-4:-2]
    said = (await h.get(url + "?role=assistant&limit=200")).json()["messages"]
    assert [m["text"] for m in said if m["contentType"] == "text"] == ["onetwo"]  # chunks merged
    empty = (await h.get(url + "?before_id=1")).json()
    assert empty == {"messages": [], "has_more": False, "oldest_id": None, "newest_id": None}
    for bad in ("before_id=0", "limit=500", "role=robot", "before_id=x"):
        assert (await h.get(url + "?" + bad)).status_code == 400, bad

    legacy = (await h.get("/sessions")).json()
    assert isinstance(legacy, list) and [s["id"] for s in legacy] == [a["id"]]
    cmds = (await h.post(f"/v1/sessions/{a['id']}/discover-commands")).json()
    assert {c["name"] for c in cmds["commands"]} == {"review", "test"} and cmds["live"] is True
    assert (await h.post("/v1/sessions/nope/discover-commands")).status_code == 404
