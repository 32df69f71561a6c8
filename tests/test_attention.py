"""What needs a caller's attention, over real HTTP against a live daemon and the fake agent: a bounded wait for a
session (`GET /v1/sessions/{id}/wait`), the events after an id (`GET /v1/events/poll`), every pending permission
request (`GET /v1/permissions/pending`); and a live session's permission mode (`POST /v1/sessions/{id}/mode`),
pipelines with unnamed, sequential stages, and `auto` on create."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from .conftest import DaemonHandle
from .test_auth import MASTER, bearer, make_key


async def test_wait_returns_when_the_session_needs_attention(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    s = await daemon.create(workdir, prompt="say:working;tool:execute:Run:make", reuse=False)
    r = await h.get(f"/v1/sessions/{s['id'][:8]}/wait", params={"timeoutSeconds": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "permission_prompt" and body["timedOut"] is False
    assert body["pendingPermission"]["toolTitle"] == "Run"
    r = await h.post(f"/v1/sessions/{s['id']}/approve", json={"requestId": body["pendingPermission"]["requestId"]})
    assert r.status_code == 200
    body = (await h.get(f"/v1/sessions/{s['id']}/wait", params={"timeoutSeconds": 20})).json()
    assert body["status"] == "idle" and body["turns"] == 1 and body["timedOut"] is False

    # a queued prompt is not idle yet: the wait lasts until both turns are over
    await h.post(f"/v1/sessions/{s['id']}/send", json={"text": "sleep:200;say:one"})
    await h.post(f"/v1/sessions/{s['id']}/send", json={"text": "say:two"})
    body = (await h.get(f"/v1/sessions/{s['id']}/wait", params={"timeoutSeconds": 20})).json()
    assert body["status"] == "idle" and body["turns"] == 3 and body["timedOut"] is False

    # a turn that does not end: the wait gives up after its timeout and says so
    await h.post(f"/v1/sessions/{s['id']}/send", json={"text": "wait-for-cancel"})
    await daemon.wait_status(s["id"], "running")
    started = time.monotonic()
    body = (await h.get(f"/v1/sessions/{s['id']}/wait", params={"timeoutSeconds": 0.3})).json()
    assert body["timedOut"] is True and body["status"] == "running"
    assert 0.25 < time.monotonic() - started < 5

    # an ended session needs no waiting
    await h.delete(f"/v1/sessions/{s['id']}")
    body = (await h.get(f"/v1/sessions/{s['id']}/wait", params={"timeoutSeconds": 30})).json()
    assert body["status"] == "killed" and body["timedOut"] is False
    r = await h.get(f"/v1/sessions/{s['id']}/wait", params={"timeoutSeconds": 99999})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"


async def test_poll_returns_the_events_after_an_id(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    s = await daemon.create(workdir, reuse=False)
    start = daemon.daemon.bus.last_id
    got: dict[str, Any] = {}

    async def poll() -> None:  # nothing after `start` yet: it waits for the first event
        r = await h.get("/v1/events/poll", params={"afterId": start, "sessionId": s["id"], "timeoutSeconds": 20})
        got.update(r.json())
    async with trio.open_nursery() as n:
        n.start_soon(poll)
        await h.post(f"/v1/sessions/{s['id']}/send", json={"text": "say:hello"})
    assert got["timedOut"] is False and got["events"] and all(e["id"] > start for e in got["events"])
    assert all(e["sessionId"] == s["id"] for e in got["events"])
    turn = await daemon.wait_event(s["id"], "turn", after_id=start)
    # the record shows idle while it is saved, and the status event follows: wait for the event
    await daemon.wait_event(s["id"], "status", after_id=turn.id, match=lambda e: e.data["status"] == "idle")

    # from that id on, the rest of the turn; everything at once since it is there already
    after = got["lastId"]
    body = (await h.get("/v1/events/poll", params={"afterId": start, "timeoutSeconds": 5})).json()
    names = [e["event"] for e in body["events"]]
    assert "turn" in names and body["lastId"] == body["events"][-1]["id"] >= after
    texts = [e["data"].get("text") for e in body["events"] if e["event"] == "message"]
    assert "hello" in texts
    limited = (await h.get("/v1/events/poll", params={"afterId": start, "limit": 2, "timeoutSeconds": 5})).json()
    assert [e["id"] for e in limited["events"]] == [e["id"] for e in body["events"][:2]]

    # nothing new: it waits out its timeout and gives the same id back
    body2 = (await h.get("/v1/events/poll", params={"afterId": body["lastId"], "timeoutSeconds": 0.2})).json()
    assert body2 == {"events": [], "lastId": body["lastId"], "timedOut": True}


async def test_poll_and_pending_show_a_key_only_its_own(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    d.http.headers.update(bearer(MASTER))
    alice, bob = (await make_key(d, "operator", "alice"))["key"], (await make_key(d, "operator", "bob"))["key"]
    mine = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "tool:edit:Edit:a.txt"},
                             headers=bearer(alice))
    theirs = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "tools:2:execute:Run:x",
                                                     "reuse": False}, headers=bearer(bob))
    a, b = mine.json()["id"], theirs.json()["id"]
    await d.wait_status(a, "permission_prompt")
    await d.wait_event(b, "permission.requested", match=lambda e: e.data.get("toolTitle") == "Run 2")

    r = await d.http.get("/v1/permissions/pending", headers=bearer(alice))
    assert r.status_code == 200
    assert [(p["sessionId"], p["toolTitle"], p["position"]) for p in r.json()["pending"]] == [(a, "Edit", 0)]
    everything = (await d.http.get("/v1/permissions/pending")).json()  # the master token sees every session
    assert everything["total"] == 3
    assert sorted((p["sessionId"], p["position"]) for p in everything["pending"]) == sorted(
        [(a, 0), (b, 0), (b, 1)])
    head = next(p for p in everything["pending"] if p["sessionId"] == b and p["position"] == 0)
    assert head["requestId"] == d.manager.records[b].pendingPermission.requestId
    # position 0 is the one approve decides
    r = await d.http.post(f"/v1/sessions/{b}/approve", json={"requestId": head["requestId"]}, headers=bearer(bob))
    assert r.status_code == 200
    left = (await d.http.get("/v1/permissions/pending", headers=bearer(bob))).json()["pending"]
    assert [(p["sessionId"], p["position"]) for p in left] == [(b, 0)] and left[0]["requestId"] != head["requestId"]

    body = (await d.http.get("/v1/events/poll", params={"afterId": 0, "timeoutSeconds": 1, "limit": 1000},
                             headers=bearer(alice))).json()
    assert body["events"] and {e["sessionId"] for e in body["events"]} == {a}
    r = await d.http.get("/v1/events/poll", params={"sessionId": b, "timeoutSeconds": 1}, headers=bearer(alice))
    assert r.status_code == 403


async def test_a_revoked_key_ends_its_wait(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    key = await make_key(d, "operator")
    sessions = []
    for prompt in ("wait-for-cancel", None):  # one busy (nothing to attend to), one idle (no events)
        r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": prompt, "reuse": False},
                              headers=bearer(key["key"]))
        sessions.append(r.json()["id"])
    busy, quiet = sessions
    await d.wait_status(busy, "running")
    got: dict[str, Any] = {}

    async def waiting(path: str, params: dict[str, Any]) -> None:
        r = await d.http.get(path, params=params, headers=bearer(key["key"]))
        got[path] = (r.status_code, r.json(), time.monotonic())
    async with trio.open_nursery() as n:
        n.start_soon(waiting, f"/v1/sessions/{busy}/wait", {"timeoutSeconds": 60})
        n.start_soon(waiting, "/v1/events/poll", {"timeoutSeconds": 60, "sessionId": quiet})
        with trio.fail_after(10):
            while d.daemon.credentials.watching < 2:  # both waits registered (no event marks that)
                assert not got, got
                await trio.sleep(0.01)
        revoked = time.monotonic()
        r = await d.http.delete(f"/v1/auth/keys/{key['id']}", headers=bearer(MASTER))
        assert r.status_code == 200
    assert len(got) == 2
    for status, body, at in got.values():
        assert status == 401 and body["code"] == "UNAUTHORIZED" and "revoked" in body["message"]
        assert at - revoked < 2


async def test_set_mode_applies_the_mode_to_a_live_session(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    s = await daemon.create(workdir, reuse=False)
    assert s["permissionMode"] == "default"
    r = await h.post(f"/v1/sessions/{s['id']}/mode", json={"mode": "bypassPermissions"})
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "permissionMode": "bypassPermissions", "currentMode": "bypassPermissions",
                        "appliedBy": "agent"}  # the fake agent offers it: ACP session/set_mode
    await h.post(f"/v1/sessions/{s['id']}/send", json={"text": "tool:execute:Run:make"})
    await daemon.wait_event(s["id"], "turn")
    texts = [m["text"] for m in (await h.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]]
    assert any(t.startswith("auto-approved (bypassPermissions)") for t in texts), texts

    # a mode the agent does not offer: the daemon applies it, and takes the agent out of bypassPermissions
    r = await h.post(f"/v1/sessions/{s['id']}/mode", json={"mode": "auto"})
    assert r.json() == {"ok": True, "permissionMode": "auto", "currentMode": "default", "appliedBy": "daemon"}
    await h.post(f"/v1/sessions/{s['id']}/send", json={"text": "tool:execute:Run:make"})
    assert (await h.get(f"/v1/sessions/{s['id']}/wait", params={"timeoutSeconds": 20})).json()["status"] == \
        "permission_prompt"  # auto approves reads only: a command is asked
    await h.post(f"/v1/sessions/{s['id']}/reject", json={})
    r = await h.post(f"/v1/sessions/{s['id']}/mode", json={"mode": "plan"})
    assert r.json()["appliedBy"] == "agent" and r.json()["currentMode"] == "plan"
    assert (await h.get(f"/v1/sessions/{s['id']}")).json()["permissionMode"] == "plan"
    r = await h.post(f"/v1/sessions/{s['id']}/mode", json={"mode": "yolo"})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"
    audit = (await h.get("/v1/audit", params={"action": "session.mode"})).json()["records"]
    assert [(a["detail"]["mode"], a["detail"]["appliedBy"]) for a in audit] == [
        ("bypassPermissions", "agent"), ("auto", "daemon"), ("plan", "agent")]
    await h.delete(f"/v1/sessions/{s['id']}")
    r = await h.post(f"/v1/sessions/{s['id']}/mode", json={"mode": "default"})
    assert r.status_code == 409


async def test_the_create_schema_names_every_permission_mode(daemon: DaemonHandle, workdir: Path) -> None:
    """The modes are part of the create schema (so generated clients and MCP tools offer them all)."""
    spec = (await daemon.http.get("/v1/openapi.json")).json()
    body = spec["paths"]["/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    [modes] = [alt["enum"] for alt in body["properties"]["permissionMode"]["anyOf"] if "enum" in alt]
    assert sorted(modes) == sorted(["default", "plan", "acceptEdits", "bypassPermissions", "dontAsk", "auto"])
    s = await daemon.create(workdir, permissionMode="auto", reuse=False)
    assert s["permissionMode"] == "auto"
    r = await daemon.http.post("/v1/sessions", json={"workDir": str(workdir), "permissionMode": "yolo"})
    assert r.status_code == 400 and "permissionMode" in r.json()["message"]


async def test_a_viewer_may_not_change_the_mode(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    s = await d.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(MASTER))
    viewer, operator = (await make_key(d, "viewer"))["key"], (await make_key(d, "operator", "op"))["key"]
    r = await d.http.post(f"/v1/sessions/{s.json()['id']}/mode", json={"mode": "bypassPermissions"},
                          headers=bearer(viewer))
    assert r.status_code == 403
    # an operator's key sees only its own sessions: the master token's is not its to change
    r = await d.http.post(f"/v1/sessions/{s.json()['id']}/mode", json={"mode": "bypassPermissions"},
                          headers=bearer(operator))
    assert r.status_code == 403 and r.json()["code"] == "SESSION_FORBIDDEN"


async def test_pipeline_stages_may_be_unnamed_and_sequential(daemon: DaemonHandle, workdir: Path) -> None:
    r = await daemon.http.post("/v1/pipelines", json={
        "name": "seq", "workDir": str(workdir), "sequential": True,
        "stages": [{"prompt": "say:a"}, {"prompt": "say:b"}, {"name": "last", "prompt": "say:c",
                                                                 "dependsOn": ["stage-1"]}]})
    assert r.status_code == 201, r.text
    stages = r.json()["stages"]
    assert [(s["name"], s["dependsOn"]) for s in stages] == [
        ("stage-1", []), ("stage-2", ["stage-1"]), ("last", ["stage-1"])]
    seq = r.json()["id"]
    r = await daemon.http.post("/v1/pipelines", json={
        "name": "par", "workDir": str(workdir), "stages": [{"prompt": "say:a"}, {"prompt": "say:b"}]})
    assert [(s["name"], s["dependsOn"]) for s in r.json()["stages"]] == [("stage-1", []), ("stage-2", [])]
    for pid in (seq, r.json()["id"]):  # run to the end (a daemon stopped while a stage starts is slow to stop)
        await daemon.wait_event(pid, "pipeline", match=lambda e: e.data["status"] == "completed", timeout=30)
    done = (await daemon.http.get(f"/v1/pipelines/{seq}")).json()["stages"]
    first = next(s for s in done if s["name"] == "stage-1")
    assert all(s["startedAt"] >= first["completedAt"] for s in done if s["name"] != "stage-1")
