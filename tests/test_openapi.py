"""The OpenAPI document is generated from the code, covers every route, and real responses conform to it."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aegisd.ops import REGISTRY, ErrorEnvelope

from .conftest import DaemonHandle, agent_env

ROOT = Path(__file__).resolve().parent.parent


def test_docs_openapi_is_current() -> None:
    from aegisd.surfaces.http._openapi import document

    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert on_disk == json.loads(json.dumps(document())), "docs/openapi.json is stale: run `make openapi`"


async def test_every_route_is_in_the_spec(daemon: DaemonHandle) -> None:
    spec = (await daemon.http.get("/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    from aegisd.surfaces.http import create_app

    app = create_app(daemon.daemon.services)
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("dashboard_"):
            continue  # pages of the web dashboard, not API routes
        from aegisd.surfaces.http._openapi import _path

        path = _path(rule.rule)[0]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if method.lower() not in spec["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def conforms(op: str, status: int, body: Any) -> None:
    """A response matches its operation's declared result type (an error: the error envelope): strictly typed,
    and every key on the wire is a declared field, left out exactly when the struct leaves it out."""
    target = REGISTRY[op].result if status < 400 else ErrorEnvelope
    typed = msgspec.convert(body, target, strict=True)  # raises if the response does not match its schema
    assert msgspec.to_builtins(typed) == body, (op, body)


MASTER = "conformance-master-token-0123456789"
# operations that cannot answer 2xx here: the agent's questions come as permission requests (always 409);
# a screenshot needs Chromium (501 without) and a public host, which does not resolve offline (400); the
# successful answer is checked against its result in tests/test_screenshot.py
ERROR_ONLY = {"session.answer": {409}, "session.screenshot": {400, 501}}


async def test_every_operation_answers_its_declared_result(daemon_factory: Any, workdir: Path,
                                                           tmp_path: Path) -> None:
    """The response-conformance test: every operation in the registry is called once (through POST /v1/rpc,
    the generic surface; streams read as NDJSON frames) and its answer decodes into its declared result."""
    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODELS="default,sonnet,haiku"),
                             memoryBridge={"enabled": True}, webhooks=[{"url": "http://127.0.0.1:1/hook"}],
                             verification={"steps": [{"name": "true", "command": ["true"]}]}, authToken=MASTER)
    d.http.headers["Authorization"] = f"Bearer {MASTER}"
    seen: set[str] = set()

    async def rpc(op: str, **params: Any) -> Any:
        r = await d.http.post("/v1/rpc", json={"id": 1, "op": op, "params": params})
        frame = r.json()
        if op in ERROR_ONLY and r.status_code in ERROR_ONLY[op]:
            assert frame["ok"] is False and frame["error"]["status"] == r.status_code, frame
        else:
            assert r.status_code == 200 and frame["ok"] is True, (op, r.text)
            conforms(op, 200, frame["result"])
        seen.add(op)
        return frame.get("result")

    async def frames(op: str, count: int, **params: Any) -> list[Any]:
        got: list[Any] = []
        async with d.http.stream("POST", "/v1/rpc", json={"id": 1, "op": op, "params": params}) as r:
            async for line in r.aiter_lines():
                if not line:
                    continue
                frame = json.loads(line)
                if "event" not in frame:
                    assert frame["ok"] is True, frame
                    break
                conforms(op, 200, frame["event"])
                got.append(frame["event"])
                if len(got) == count:
                    break
        assert got, op
        seen.add(op)
        return got

    for op in ("hello", "health", "tools", "metrics", "v2", "session.stats", "sessions.health",
               "permissions.pending", "usage.tiers", "alerts.stats", "alerts.test", "channels.health",
               "webhooks.dead_letter", "session.list_legacy", "template.list", "pipeline.list", "auth.keys.list",
               "auth.sse_token", "auth.whoami", "auth.users", "analytics.summary", "analytics.costs",
               "analytics.tokens", "analytics.rate_limits", "memory.list"):
        await rpc(op)
    await rpc("diagnostics", limit=5)
    await rpc("handshake", protocolVersion="1", clientCapabilities=["rpc", "teleport"])

    s = await rpc("session.create", workDir=str(workdir), prompt="tool:edit:Edit:f")
    sid = s["id"]
    await d.wait_event(sid, "permission.requested")
    assert (await rpc("session.wait", id=sid, timeoutSeconds=0))["actionHints"]  # waiting: approve/reject hints
    assert (await rpc("permissions.pending"))["total"] == 1
    for op in ("session.get", "session.health", "session.read", "session.transcript", "session.transcript.cursor",
               "session.summary", "session.pane", "session.metrics", "session.latency", "session.tools",
               "session.children", "session.permissions.get", "session.permission_profile.get",
               "session.commands", "usage.session", "session.memories.list"):
        await rpc(op, id=sid)
    await rpc("session.list", status="all")
    assert (await rpc("session.read", id=sid))["pendingPermission"]  # left out when none waits
    await rpc("session.approve", id=sid)
    await d.wait_event(sid, "turn")
    await rpc("session.read", id=sid)
    await rpc("session.latency", id=sid)
    await rpc("session.wait", id=sid, timeoutSeconds=5)
    await rpc("session.send", id=sid, text="say:x")
    await rpc("session.send", id=sid, text="say:y")  # queued behind the first: queuePosition
    await d.wait_event(sid, "turn", match=lambda e: e.data.get("turn") == 3)
    await rpc("session.command", id=sid, command="review")
    await d.wait_event(sid, "turn", match=lambda e: e.data.get("turn") == 4)
    await rpc("session.set_mode", id=sid, mode="plan")
    await rpc("session.set_model", id=sid, model="sonnet")
    await rpc("session.interrupt", id=sid)
    await rpc("session.permission_profile.set", id=sid, defaultBehavior="ask", rules=[])
    await rpc("session.permissions.set", id=sid, rules=[{"ruleBehavior": "allow", "toolName": "Read"}])
    await rpc("session.verify", id=sid)
    await rpc("session.screenshot", id=sid, url="http://example.com/")
    await rpc("session.answer", id=sid, questionId="q", answer="yes")
    await rpc("events.poll", afterId=0, timeoutSeconds=0, limit=5)
    await rpc("events.poll", sessionId=sid, timeoutSeconds=0)

    kid = (await rpc("session.spawn", id=sid, name="kid"))["id"]
    fork = await rpc("session.fork", id=sid, prompt="tool:edit:Edit:g")
    await d.wait_event(fork["id"], "permission.requested")
    await rpc("session.reject", id=fork["id"])
    batch = await rpc("sessions.batch_create", sessions=[{"workDir": str(workdir), "prompt": "say:b"},
                                                         {"workDir": "/nowhere"}])
    assert batch["created"] == 1 and batch["failed"] == 1
    await rpc("sessions.batch_delete", ids=[batch["sessions"][0]["id"], "nope"])

    await rpc("usage.summary")
    await rpc("usage.by_key", **{"from": "2020-01-01"})
    await rpc("metrics.aggregate", groupBy="model")
    await rpc("webhooks.deliveries", id="0")

    t = await rpc("template.create", name="t", workDir=str(workdir))
    await rpc("template.get", id=t["id"])
    await rpc("template.update", id=t["id"], name="t2")
    await rpc("template.delete", id=t["id"])

    await rpc("memory.set", key="project/a", value="1", ttlSeconds=60)
    await rpc("memory.get", key="project/a")
    await rpc("memory.scope", scope="project")
    await rpc("session.memories.set", id=sid, key="note", value="v")
    await rpc("session.memories.list", id=sid)
    await rpc("memory.delete", key="project/a")

    pipe = await rpc("pipeline.create", name="p", workDir=str(workdir), stages=[{"prompt": "say:x"}])
    await rpc("pipeline.get", id=pipe["id"])

    key = await rpc("auth.keys.create", name="k", role="operator")
    await rpc("auth.verify", token=key["key"])
    await rpc("auth.verify", token="wrong")  # {valid: false}: role and name left out
    await rpc("auth.keys.quotas.set", id=key["id"], maxConcurrentSessions=3)
    await rpc("auth.keys.quotas.get", id=key["id"])
    await rpc("auth.keys.rotate", id=key["id"])
    await rpc("auth.keys.revoke", id=key["id"])

    (node,) = await rpc("nodes.list")
    await rpc("nodes.get", id=node["id"])
    await rpc("nodes.drain", id=node["id"])
    await rpc("nodes.undrain", id=node["id"])

    await frames("events.follow", 3, afterId=0)
    await rpc("session.close", id=kid)
    await rpc("session.kill", id=fork["id"])
    await rpc("session.kill", id=sid)
    ended = await frames("session.follow", 10_000, id=sid, afterId=0)
    assert ended[-1]["event"] == "ended"
    await rpc("session.history", status="ended")
    await rpc("audit.query", verify=True)
    await rpc("audit.query", action="session.create", limit=2)

    stopping = await frames("daemon.stop", 1)
    assert stopping == [{"stopping": True, "pid": os.getpid(), "httpUrl": d.daemon.http_url}]
    assert seen == set(REGISTRY), f"operations never called: {sorted(set(REGISTRY) - seen)}"


def test_component_names_are_unique_and_plain() -> None:
    """Every struct of the operations has a name of its own, so the document's components read as the code."""
    from aegisd.surfaces.http._openapi import document

    names = list(document()["components"]["schemas"])
    assert not [n for n in names if "." in n], names  # msgspec qualifies a clash with the module's name


def test_the_document_says_what_each_route_takes() -> None:
    from aegisd.surfaces.http._openapi import document

    paths = document()["paths"]
    listed = {p["name"]: p for p in paths["/v1/sessions"]["get"]["parameters"]}
    assert {"page", "limit", "status", "project", "workDir", "pageSize"} <= set(listed)
    assert not any(p["required"] for p in listed.values())
    body = paths["/v1/auth/verify"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"]["required"] == ["token"]
    assert "token" in body["content"]["application/json"]["schema"]["properties"]
    wait = {p["name"] for p in paths["/v1/sessions/{sid}/wait"]["get"]["parameters"]}
    assert wait == {"sid", "timeoutSeconds"}
    assert {p["name"] for p in paths["/v1/audit"]["get"]["parameters"]} >= {"format", "from", "to", "verify"}
    for path, item in paths.items():
        for method, operation in item.items():
            if "x-aegis-operation" in operation and path != "/v1/audit":
                ok = operation["responses"][next(iter(operation["responses"]))]
                assert "content" in ok, (method, path)  # every operation's answer has a schema


@pytest.mark.parametrize("seed", range(3))
async def test_junk_input_never_5xx(daemon: DaemonHandle, workdir: Path, seed: int) -> None:
    """A bounded, seeded fuzz of every JSON route with wrong types, unknown fields and odd values."""
    rng = random.Random(seed)
    junk: list[Any] = [None, 0, -1, 2**63, 1.5, "", "x" * 5000, [], {}, {"a": 1}, True, "../../etc", "\x00",
                       "😀", str(workdir)]
    sid = (await daemon.create(workdir))["id"]
    spec = (await daemon.http.get("/v1/openapi.json")).json()
    for path, item in spec["paths"].items():
        if path in ("/v1/events", "/v1/sessions/{sid}/events", "/v1/sessions/{sid}/stream"):
            continue  # streams: covered in test_sse
        for method, operation in item.items():
            props = (operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                     .get("schema", {}).get("properties", {}))
            for _ in range(6):
                body: Any = {k: rng.choice(junk) for k in props if rng.random() < 0.7}
                if rng.random() < 0.3:
                    body[rng.choice(["bogus", "id", "__proto__"])] = rng.choice(junk)
                if rng.random() < 0.1:
                    body = rng.choice(junk)
                url = path.replace("{sid}", rng.choice([sid, sid[:6], "nope", "%2e%2e"])).replace("{kid}", "nokey")
                query = {"page": str(rng.choice(junk)), "limit": str(rng.choice(junk))} if method == "get" else None
                r = await daemon.http.request(method.upper(), url, json=body if method != "get" else None,
                                              params=query)
                intended_501 = path.endswith("/screenshot") and r.status_code == 501  # documented: no browser
                assert r.status_code < 500 or intended_501, (method, url, body, r.status_code, r.text)
                if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
                    msgspec.convert(r.json(), ErrorEnvelope, strict=True)
