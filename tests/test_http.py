"""HTTP facade: validation and error envelopes (never a 5xx for bad input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import DaemonHandle

JSON_TYPE = {"Content-Type": "application/json"}  # bodies of any other type are refused (415)


@pytest.mark.parametrize("query", ["page=0", "page=-1", "limit=0", "limit=999", "limit=abc", "status=bogus"])
async def test_list_bad_params(daemon: DaemonHandle, query: str) -> None:
    r = await daemon.http.get(f"/v1/sessions?{query}")
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "VALIDATION_ERROR" and body["requestId"] and body["message"]


async def test_list_pagination(daemon: DaemonHandle, workdir: Path) -> None:
    ids = [(await daemon.create(workdir, reuse=False))["id"] for _ in range(3)]
    r = await daemon.http.get("/v1/sessions?page=1&limit=2&status=active")
    body = r.json()
    assert body["pagination"] == {"page": 1, "limit": 2, "total": 3, "totalPages": 2}
    assert [s["id"] for s in body["sessions"]] == ids[::-1][:2]  # newest first
    r = await daemon.http.get("/v1/sessions?page=2&limit=2")
    assert [s["id"] for s in r.json()["sessions"]] == [ids[0]]


@pytest.mark.parametrize("body,code", [
    ({}, "VALIDATION_ERROR"),
    ({"workDir": 42}, "VALIDATION_ERROR"),
    ({"workDir": "/etc"}, "INVALID_WORKDIR"),
    ({"workDir": "relative"}, "INVALID_WORKDIR"),
    ({"workDir": "/tmp/../etc"}, "INVALID_WORKDIR"),
    ({"workDir": "WORK", "permissionMode": "yolo"}, "VALIDATION_ERROR"),
    ({"workDir": "WORK", "agent": "nope"}, "VALIDATION_ERROR"),
    ({"workDir": "WORK", "stallThresholdMs": 5}, "VALIDATION_ERROR"),
    ({"workDir": "WORK", "unknownField": 1}, "VALIDATION_ERROR"),
])
async def test_create_bad_input(daemon: DaemonHandle, workdir: Path, body: dict, code: str) -> None:
    if body.get("workDir") == "WORK":
        body = {**body, "workDir": str(workdir)}
    r = await daemon.http.post("/v1/sessions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code
    assert daemon.manager.records == {}  # nothing was created


async def test_malformed_and_oversized_bodies(daemon: DaemonHandle, workdir: Path) -> None:
    r = await daemon.http.post("/v1/sessions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"
    r = await daemon.http.post("/v1/sessions", json=[1, 2])
    assert r.status_code == 400
    import httpx

    # its own connection: the server answers 413 before reading the body, then drops the connection
    async with httpx.AsyncClient(base_url=daemon.daemon.http_url, timeout=10) as fresh:
        r = await fresh.post("/v1/sessions", content=b"x" * (1024 * 1024 + 10), headers=JSON_TYPE)
    assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"
    s = await daemon.create(workdir)
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/send", json={"text": ""})
    assert r.status_code == 400
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/send", json={"txt": "hi"})
    assert r.status_code == 400


async def test_unknown_routes_and_ids(daemon: DaemonHandle) -> None:
    r = await daemon.http.get("/v1/nope")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = await daemon.http.get("/v1/sessions/0000-no-such")
    assert r.status_code == 404 and r.json()["code"] == "SESSION_NOT_FOUND"
    r = await daemon.http.put("/v1/health")
    assert r.status_code == 405
    for path in ("read", "transcript", "health"):
        r = await daemon.http.get(f"/v1/sessions/nope/{path}")
        assert r.status_code == 404


async def test_health_and_headers(daemon: DaemonHandle) -> None:
    r = await daemon.http.get("/v1/health", headers={"X-Request-Id": "abc123"})
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.headers["x-aegis-api-version"] == "1"
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_transcript_paging(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="say:one")
    await daemon.wait_event(s["id"], "turn")
    for i in range(2):
        await daemon.http.post(f"/v1/sessions/{s['id']}/send", json={"text": f"say:n{i}"})
        await daemon.wait_event(s["id"], "turn", match=lambda e, i=i: e.data["turn"] == i + 2)
    r = await daemon.http.get(f"/v1/sessions/{s['id']}/transcript?page=1&limit=2")
    body = r.json()
    assert body["total"] >= 6 and body["hasMore"] is True and len(body["messages"]) == 2
    assert [m["id"] for m in body["messages"]] == [1, 2]
    r = await daemon.http.get(f"/v1/sessions/{s['id']}/transcript?role=user&limit=200")
    assert [m["text"] for m in r.json()["messages"]] == ["say:one", "say:n0", "say:n1"]
    r = await daemon.http.get(f"/v1/sessions/{s['id']}/transcript?role=robot")
    assert r.status_code == 400


async def test_auth_token_required_when_set(daemon_factory, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    d = await daemon_factory(authToken="s3cret-token-value")
    r = await d.http.get("/v1/sessions")
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    r = await d.http.get("/v1/sessions", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await d.http.get("/v1/sessions", headers={"Authorization": "Bearer s3cret-token-value"})
    assert r.status_code == 200
    assert (await d.http.get("/v1/health")).status_code == 200


async def test_refuses_non_loopback_without_auth(tmp_path: Path, short_tmp: Path) -> None:
    from aegisd.app.daemon import Daemon
    from aegisd.core.errors import ValidationError

    from .conftest import make_config

    node = {"advertiseUrl": "http://192.0.2.1:9100", "clusterSecret": "s" * 32}  # a cluster node needs them
    d = Daemon(make_config(tmp_path, short_tmp, host="0.0.0.0", **node))
    with pytest.raises(ValidationError, match="non-loopback"):
        d.check_bind_safety()
    Daemon(make_config(tmp_path, short_tmp, host="0.0.0.0", authToken="x" * 32, **node)).check_bind_safety()


async def test_body_on_a_route_that_takes_none(daemon: DaemonHandle, workdir: Path) -> None:
    """A body sent to a route without one is refused, and read even so: left unread, it used to leave the
    keep-alive connection stuck now and then, so the client's next request never got an answer."""
    s = await daemon.create(workdir)
    h = daemon.http  # one keep-alive connection for all of these
    for i in range(40):
        body = {"x": "é" * (i * 97)} if i % 2 else None
        with trio.fail_after(5):
            r = await h.post(f"/v1/sessions/{s['id']}/interrupt", json=body)
            assert r.status_code == (400 if body else 200), r.text
            assert (await h.get("/v1/sessions/stats")).status_code == 200
    r = await h.post(f"/v1/sessions/{s['id']}/interrupt", json={"force": True})
    assert r.json()["code"] == "VALIDATION_ERROR" and "takes no request body" in r.json()["message"]
    assert (await h.post(f"/v1/sessions/{s['id']}/interrupt", json={})).status_code == 200


async def test_keep_alive_survives_unread_bodies(daemon_factory: Any, workdir: Path) -> None:
    """Answers sent before the request body was read (a 404 before any view, a 401 before the body is parsed)
    used to leave hypercorn's keep-alive connection waiting forever: with a 500 kB body, every next request on
    it hung. The body is now drained first; one too large to drain closes the connection instead."""
    d = await daemon_factory(authToken="t" * 32)
    auth = {"Authorization": "Bearer " + "t" * 32}
    s = (await d.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=auth)).json()
    big = b'{"text": "' + b"x" * 500_000 + b'"}'
    cases = [("POST", "/v1/no-such-route", auth, 404), ("POST", f"/v1/sessions/{s['id']}/send", {}, 401),
             ("PUT", "/v1/sessions", auth, 405), ("POST", f"/v1/sessions/{s['id']}/send", auth, 400)]
    async with httpx.AsyncClient(base_url=d.daemon.http_url, timeout=20) as h:  # one connection throughout
        for method, path, headers, status in cases:
            for _ in range(5):
                with trio.fail_after(5):
                    r = await h.request(method, path, content=big,
                                        headers={**headers, "Content-Type": "application/json"})
                    assert r.status_code == status and "close" not in r.headers.get("connection", "")
                    assert (await h.get("/v1/health")).status_code == 200
        for _ in range(300):  # small POSTs keep the connection too
            with trio.fail_after(5):
                r = await h.post("/v1/rpc", json={"id": 1, "op": "session.get", "params": {"id": s["id"]}},
                                 headers=auth)
            assert r.status_code == 200 and "close" not in r.headers.get("connection", "")
        with trio.fail_after(10):
            r = await h.post("/v1/no-such-route", content=b"x" * 2_000_000, headers={**auth, **JSON_TYPE})
        assert r.status_code == 404 and r.headers["connection"] == "close"  # past MAX_BODY: not drained
        assert (await h.get("/v1/health")).status_code == 200  # a new connection, transparently


async def test_the_peer_of_a_keepalive_connection_is_looked_up_once(daemon: DaemonHandle, monkeypatch: Any) -> None:
    """Who is at the other end of a TCP connection (the kernel's socket table) is asked once per connection:
    the requests of a keep-alive connection share it, a new connection is looked up anew."""
    from aegisd.surfaces.http import auth

    lookups: list[tuple[Any, Any]] = []
    real = auth.tcp_peer

    def counting(client: Any, server: Any) -> Any:
        lookups.append((client, server))
        return real(client, server)

    monkeypatch.setattr(auth, "tcp_peer", counting)
    async with httpx.AsyncClient(base_url=daemon.daemon.http_url, timeout=20) as one:
        for _ in range(5):
            r = await one.get("/v1/auth/whoami")
            assert r.status_code == 200 and r.json()["kind"] == "local"
    assert len(lookups) == 1
    async with httpx.AsyncClient(base_url=daemon.daemon.http_url, timeout=20) as two:
        assert (await two.get("/v1/auth/whoami")).status_code == 200
    assert len(lookups) == 2 and lookups[0][0] != lookups[1][0]  # another client port: another connection
