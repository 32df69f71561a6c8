"""Ownership everywhere, and no leaks to viewers (issue 10, item 5), over real HTTP with two operator keys and a
viewer key: templates, the memory bridge, the dead-letter queue, alert stats and diagnostics follow session
ownership; an id prefix resolves among the caller's own sessions only; webhook payloads never carry the
workDir."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from aegisd.notify import webhooks
from aegisd.sessions import manager as _manager
from aegisd.surfaces.http.routes import ROUTES

from .conftest import DaemonHandle
from .test_auth import MASTER, bearer, make_key
from .test_terminal import recv, server_closed, ws_url
from .test_webhooks import Receiver, wait_until


class Keys:
    """Two operators (a, b) and a viewer (v), each with its own headers."""

    def __init__(self, a: dict[str, Any], b: dict[str, Any], v: dict[str, Any]) -> None:
        self.a, self.b, self.v = bearer(a["key"]), bearer(b["key"]), bearer(v["key"])
        self.a_id, self.b_id, self.v_id = a["id"], b["id"], v["id"]
        self.master = bearer(MASTER)


async def keys_of(d: DaemonHandle) -> Keys:
    return Keys(await make_key(d, "operator", "alice"), await make_key(d, "operator", "bob"),
                await make_key(d, "viewer", "victor"))


async def create(d: DaemonHandle, headers: dict[str, str], workdir: Path, **body: Any) -> dict[str, Any]:
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False, **body}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_templates_belong_to_their_key(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    k = await keys_of(d)
    h = d.http
    r = await h.post("/v1/templates", json={"name": "alices", "workDir": str(workdir), "prompt": "say:secret plan"},
                     headers=k.a)
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    assert r.json()["ownerKeyId"] == k.a_id
    mine = (await h.post("/v1/templates", json={"name": "bobs", "workDir": str(workdir)}, headers=k.b)).json()
    # the other operator and the viewer: not listed, not readable, not changeable, not usable
    assert [t["name"] for t in (await h.get("/v1/templates", headers=k.b)).json()] == ["bobs"]
    assert (await h.get("/v1/templates", headers=k.v)).json() == []
    for headers in (k.b, k.v):
        r = await h.get(f"/v1/templates/{tid}", headers=headers)
        assert r.status_code == 404 and "secret plan" not in r.text
    r = await h.put(f"/v1/templates/{tid}", json={"prompt": "say:hijacked"}, headers=k.b)
    assert r.status_code == 404
    r = await h.post("/v1/sessions", json={"templateId": tid}, headers=k.b)
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    assert len(d.manager.records) == 0  # nothing was created from it
    assert (await h.delete(f"/v1/templates/{tid}", headers=k.b)).status_code == 404
    # the owner still has it, unchanged, and can use it
    assert (await h.get(f"/v1/templates/{tid}", headers=k.a)).json()["prompt"] == "say:secret plan"
    s = await create(d, k.a, workdir, templateId=tid)
    assert s["ownerKeyId"] == k.a_id
    # admins see and manage every template
    assert {t["name"] for t in (await h.get("/v1/templates", headers=k.master)).json()} == {"alices", "bobs"}
    r = await h.put(f"/v1/templates/{mine['id']}", json={"description": "seen by admin"}, headers=k.master)
    assert r.status_code == 200
    assert (await h.delete(f"/v1/templates/{tid}", headers=k.a)).json() == {"ok": True}


async def test_memory_bridge_belongs_to_its_key(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER, memoryBridge={"enabled": True})
    k = await keys_of(d)
    h = d.http
    r = await h.post("/v1/memory", json={"key": "project/notes", "value": "alice-secret"}, headers=k.a)
    assert r.status_code == 200
    # another key: nothing to read, list or delete
    for headers in (k.b, k.v):
        r = await h.get("/v1/memory/project/notes", headers=headers)
        assert r.status_code == 404 and "alice-secret" not in r.text
        assert (await h.get("/v1/memory", headers=headers)).json() == {"entries": []}
        assert (await h.get("/v1/memories?scope=project", headers=headers)).json()["entries"] == []
        r = await h.get(f"/v1/memory/project/notes?ownerKeyId={k.a_id}", headers=headers)
        assert r.status_code == 404
    assert (await h.delete("/v1/memory/project/notes", headers=k.b)).status_code == 404
    # the same key name in bob's own space does not touch alice's
    assert (await h.post("/v1/memory", json={"key": "project/notes", "value": "bob's"}, headers=k.b)).status_code == 200
    assert (await h.get("/v1/memory/project/notes", headers=k.a)).json()["entry"]["value"] == "alice-secret"
    assert (await h.get("/v1/memory/project/notes", headers=k.b)).json()["entry"]["value"] == "bob's"
    # memoryKeys on create injects the creator's own entries, never another key's
    s = await create(d, k.b, workdir, prompt="say:hello", memoryKeys=["project/notes"])
    await d.wait_event(s["id"], "turn")
    text = json.dumps((await h.get(f"/v1/sessions/{s['id']}/transcript", headers=k.b)).json())
    assert "bob's" in text and "alice-secret" not in text
    # session memories live with the session's owner: alice's session's are not bob's to read
    sa = await create(d, k.a, workdir)
    r = await h.post(f"/v1/sessions/{sa['id']}/memories", json={"key": "k", "value": "alice-session"}, headers=k.a)
    assert r.status_code == 200
    assert (await h.get(f"/v1/sessions/{sa['id']}/memories", headers=k.b)).status_code == 403
    assert "alice-session" not in (await h.get("/v1/memory", headers=k.b)).text
    # admins see every owner's entries and can name one
    entries = (await h.get("/v1/memory?prefix=project/", headers=k.master)).json()["entries"]
    assert sorted((e["value"], e["ownerKeyId"]) for e in entries) == [("alice-secret", k.a_id), ("bob's", k.b_id)]
    r = await h.get(f"/v1/memory/project/notes?ownerKeyId={k.a_id}", headers=k.master)
    assert r.json()["entry"]["value"] == "alice-secret"
    assert (await h.delete(f"/v1/memory/project/notes?ownerKeyId={k.b_id}", headers=k.master)).status_code == 200
    assert (await h.get("/v1/memory/project/notes", headers=k.b)).status_code == 404
    assert (await h.get("/v1/memory/project/notes", headers=k.a)).status_code == 200


def _ids(monkeypatch: Any, ids: list[str]) -> None:
    """Sessions get these ids, in order (so that prefixes shared across keys are certain, not luck)."""
    queue = list(ids)
    monkeypatch.setattr(_manager, "uuid", types.SimpleNamespace(uuid4=lambda: queue.pop(0)))


BODIES: dict[str, Any] = {  # a valid body for each route that needs one, so only the id decides the answer
    "session.send": {"text": "say:x"}, "session.command": {"command": "review"},
    "session.answer": {"questionId": "q", "answer": "a"}, "session.memories.set": {"key": "k", "value": "v"},
    "session.permissions.set": [], "session.screenshot": {"url": "https://example.com/"},
    "session.set_model": {"model": "sonnet"}, "session.set_mode": {"mode": "plan"},
}


async def test_prefixes_resolve_among_own_sessions(daemon_factory: Any, workdir: Path, monkeypatch: Any) -> None:
    d = await daemon_factory(authToken=MASTER, memoryBridge={"enabled": True})
    k = await keys_of(d)
    h = d.http
    alice_id, bob_id = "abcd1111-0000-4000-8000-000000000001", "abcd2222-0000-4000-8000-000000000002"
    _ids(monkeypatch, [alice_id, bob_id, "abcd2222-0000-4000-8000-000000000003"])
    await create(d, k.a, workdir)
    await create(d, k.b, workdir)
    # a prefix only another key's session has: not found, and the answer never holds the full id
    checked = 0
    for methods, path, op_name, _source, _status in ROUTES:
        if "<sid>" not in path:
            continue
        url = path.replace("<sid>", "abcd1")
        r = await h.request(methods[0], url, headers=k.b, **({"json": BODIES[op_name]} if op_name in BODIES else {}))
        assert r.status_code == 404 and r.json()["code"] == "SESSION_NOT_FOUND", (url, r.text)
        assert alice_id not in r.text and "abcd1111" not in r.text, (url, r.text)
        checked += 1
    assert checked >= 35
    for path in ("/v1/sessions/abcd1/events", "/v1/usage/sessions/abcd1"):
        r = await h.get(path, headers=k.b)
        assert r.status_code == 404 and alice_id not in r.text, (path, r.text)
    for op_name, params in (("events.follow", {"sessionId": "abcd1"}), ("session.get", {"id": "abcd1"})):
        r = await h.post("/v1/rpc", json={"id": 1, "op": op_name, "params": params}, headers=k.b)
        assert alice_id not in r.text and "SESSION_NOT_FOUND" in r.text, r.text
    r = await h.post("/v1/templates", json={"name": "copy", "sessionId": "abcd1"}, headers=k.b)
    assert r.status_code == 404 and alice_id not in r.text
    r = await h.post("/v1/sessions", json={"workDir": str(workdir), "parentId": "abcd1"}, headers=k.b)
    assert r.status_code == 404 and alice_id not in r.text
    async with open_websocket_url(ws_url(d, "abcd1"), extra_headers=list(k.b.items())) as ws:
        err = await recv(ws)
        assert err["code"] == "SESSION_NOT_FOUND" and alice_id not in json.dumps(err)
        assert await server_closed(ws) == 4404
    # a prefix shared with another key's session names the caller's own one
    assert (await h.get("/v1/sessions/abcd", headers=k.b)).json()["id"] == bob_id
    assert (await h.get("/v1/sessions/abcd", headers=k.a)).json()["id"] == alice_id
    assert (await h.get("/v1/sessions/abcd", headers=k.v)).status_code == 404
    # ambiguity counts the caller's own sessions only
    await create(d, k.b, workdir)
    r = await h.get("/v1/sessions/abcd", headers=k.b)
    assert r.status_code == 409 and r.json()["code"] == "AMBIGUOUS_ID" and "matches 2 sessions" in r.json()["message"]
    r = await h.get("/v1/sessions/abcd", headers=k.master)
    assert "matches 3 sessions" in r.json()["message"]
    # a full id of another key's session may say so
    r = await h.get(f"/v1/sessions/{alice_id}", headers=k.b)
    assert r.status_code == 403 and r.json()["code"] == "SESSION_FORBIDDEN"


async def test_children_are_those_the_caller_can_see(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    k = await keys_of(d)
    h = d.http
    sa = await create(d, k.a, workdir)
    # bob cannot hang a session under alice's (the child would show in her list)
    r = await h.post("/v1/sessions", json={"workDir": str(workdir), "parentId": sa["id"]}, headers=k.b)
    assert r.status_code == 403
    # a child an admin spawns belongs to the admin, and is not alice's to see
    r = await h.post(f"/v1/sessions/{sa['id']}/spawn", json={}, headers=k.master)
    assert r.status_code == 201
    assert (await h.get(f"/v1/sessions/{sa['id']}/children", headers=k.a)).json()["children"] == []
    mine = (await h.post(f"/v1/sessions/{sa['id']}/spawn", json={}, headers=k.a)).json()
    kids = (await h.get(f"/v1/sessions/{sa['id']}/children", headers=k.a)).json()["children"]
    assert [c["id"] for c in kids] == [mine["id"]]
    assert len((await h.get(f"/v1/sessions/{sa['id']}/children", headers=k.master)).json()["children"]) == 2


SECRET_PATH = "/services/T000/B000/XXXXsecret"


async def test_dead_letters_alerts_and_diagnostics_show_own_sessions(
        daemon_factory: Any, nursery: trio.Nursery, workdir: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_S", (0.01, 0.01, 0.01))
    down = Receiver([500] * 10)
    base = await nursery.start(down.serve)
    url = base.rsplit("/", 1)[0] + SECRET_PATH
    d = await daemon_factory(authToken=MASTER, webhooks=[{"url": url, "events": ["session.created"]}],
                             alerting={"failureThreshold": 100})
    k = await keys_of(d)
    h = d.http
    sa = await create(d, k.a, workdir, prompt="crash")
    await d.wait_status(sa["id"], "crashed")
    with trio.fail_after(10):
        while not d.daemon.webhooks.dlq:
            await d.daemon.webhooks.dlq_changed.wait()
    # the dead-letter queue: the owner sees its session's entry (host only), others nothing
    dlq = (await h.get("/v1/webhooks/dead-letter", headers=k.a)).json()
    assert len(dlq) == 1 and dlq[0]["payload"]["session"]["id"] == sa["id"]
    assert SECRET_PATH not in json.dumps(dlq) and dlq[0]["endpoint"] == webhooks.log_url(url)
    for headers in (k.b, k.v):
        assert (await h.get("/v1/webhooks/dead-letter", headers=headers)).json() == []
    assert (await h.get("/v1/webhooks/dead-letter", headers=k.master)).json()[0]["endpoint"] == url
    # alert stats: counters for all, details only about one's own sessions, never a secret URL
    for who in (k.a, k.b, k.v, k.master):
        assert SECRET_PATH not in (await h.get("/v1/alerts/stats", headers=who)).text
    mine = (await h.get("/v1/alerts/stats", headers=k.a)).json()["trackers"]
    assert sa["id"][:8] in mine["session_failure"]["lastDetail"]
    assert "gave up" in mine["webhook_dead_letter"]["lastDetail"]
    for headers in (k.b, k.v):
        theirs = (await h.get("/v1/alerts/stats", headers=headers)).json()["trackers"]
        assert theirs["session_failure"]["total"] == 1
        assert theirs["session_failure"]["lastDetail"] is None and theirs["webhook_dead_letter"]["lastDetail"] is None
    # diagnostics: crashes of one's own sessions only
    assert [e["sessionId"] for e in (await h.get("/v1/diagnostics", headers=k.a)).json()["events"]] == [sa["id"]]
    for headers in (k.b, k.v):
        assert (await h.get("/v1/diagnostics", headers=headers)).json() == {"count": 0, "events": []}


@pytest.mark.parametrize("fmt", ["json", "slack"])
async def test_webhook_payloads_never_carry_the_workdir(daemon_factory: Any, nursery: trio.Nursery, workdir: Path,
                                                       fmt: str) -> None:
    recv_ = Receiver([])
    url = await nursery.start(recv_.serve)
    d = await daemon_factory(webhooks=[{"url": url, "format": fmt, "events": ["*"]}])
    s = await d.create(workdir, prompt=f"say:working in {workdir};tool:execute:Run {workdir}/deploy.sh:ls",
                       name=f"build of {workdir}")
    await d.wait_status(s["id"], "permission_prompt")
    await d.http.post(f"/v1/sessions/{s['id']}/approve")
    await d.wait_event(s["id"], "turn")
    await d.http.delete(f"/v1/sessions/{s['id']}")
    names = ("session.created", "status.permission", "message.assistant", "message.tool_use", "session.ended")
    if fmt == "json":
        await wait_until(lambda: {e["event"] for e in recv_.events()} >= set(names), recv_)
        created = next(e for e in recv_.events() if e["event"] == "session.created")
        assert json.loads(created["detail"])["workDir"] == "[REDACTED]"
        permission = next(e for e in recv_.events() if e["event"] == "status.permission")
        assert "Run [REDACTED]/deploy.sh" in permission["detail"]
    else:
        await wait_until(lambda: any("ended" in e["text"] for e in recv_.events()), recv_)
        assert any("needs approval: Run [REDACTED]/deploy.sh" in e["text"] for e in recv_.events())
    for _headers, body in recv_.requests:
        assert str(workdir).encode() not in body, body
