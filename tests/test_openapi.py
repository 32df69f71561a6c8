"""The OpenAPI document is generated from the code, covers every route, and real responses conform to it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aegisd.ops._results import RESULTS, ErrorEnvelope

from .conftest import DaemonHandle

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
    target = RESULTS[op] if status < 400 else ErrorEnvelope
    msgspec.convert(body, target, strict=True)  # raises if the response does not match its schema


async def test_responses_conform(daemon: DaemonHandle, workdir: Path) -> None:
    h = daemon.http
    r = await h.get("/v1/health")
    conforms("health", r.status_code, r.json())
    r = await h.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "tool:edit:Edit:f"})
    conforms("session.create", r.status_code, r.json())
    sid = r.json()["id"]
    await daemon.wait_event(sid, "permission.requested")
    for path, op in [(f"/v1/sessions/{sid}", "session.get"), ("/v1/sessions", "session.list"),
                     (f"/v1/sessions/{sid}/health", "session.health"), (f"/v1/sessions/{sid}/read", "session.read"),
                     (f"/v1/sessions/{sid}/transcript", "session.transcript")]:
        r = await h.get(path)
        conforms(op, r.status_code, r.json())
    r = await h.post(f"/v1/sessions/{sid}/approve")
    conforms("session.approve", r.status_code, r.json())
    await daemon.wait_event(sid, "turn")
    r = await h.post(f"/v1/sessions/{sid}/send", json={"text": "say:x"})
    conforms("session.send", r.status_code, r.json())
    r = await h.post(f"/v1/sessions/{sid}/interrupt")
    conforms("session.interrupt", r.status_code, r.json())
    r = await h.post(f"/v1/sessions/{sid}/reject")
    conforms("session.reject", r.status_code, r.json())  # 409: the error envelope
    r = await h.post("/v1/auth/keys", json={"name": "k", "role": "operator"})
    conforms("auth.keys.create", r.status_code, r.json())
    r = await h.get("/v1/auth/keys", headers={"Authorization": f"Bearer {r.json()['key']}"})
    conforms("auth.keys.list", r.status_code, r.json())
    r = await h.delete(f"/v1/sessions/{sid}")
    conforms("session.kill", r.status_code, r.json())


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
