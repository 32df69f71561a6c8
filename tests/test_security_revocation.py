"""Revocation is immediate (issue 10, item 6): revoking, expiring or rotating past its grace a key closes the SSE
streams and terminal WebSockets it opened (sse_ tokens it minted included) within a second, and so does a
dashboard sign-on that ends; the master token's and other keys' streams stay. Real HTTP, a real WebSocket."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from aegisd.auth import oidc as oidc_mod

from .conftest import DaemonHandle
from .test_auth import MASTER, bearer, make_key
from .test_terminal import recv, recv_until, server_closed, ws_url

LATE_S = 1.0  # how long after its credential ends a connection may stay open


def now_ms() -> int:
    return int(time.time() * 1000)


class Stream:
    """An SSE response read in the background: its frames as they come, and when the server ended it."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
        self.client, self.url, self.headers = client, url, headers or {}
        self.frames: list[dict[str, Any]] = []
        self.closed = trio.Event()
        self.closed_ms = 0
        self._got = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.client.stream("GET", self.url, headers=self.headers) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    self.frames.append(json.loads(line[6:]))
                    if len(self.frames) == 1:
                        task_status.started()
                    self._got.set()
                    self._got = trio.Event()
        self.closed_ms = now_ms()
        self.closed.set()

    async def wait_for(self, pred: Any, timeout: float = 10) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                for f in self.frames:
                    if pred(f):
                        return f
                assert not self.closed.is_set(), f"stream ended: {self.frames[-3:]}"
                await self._got.wait()

    async def wait_closed(self, timeout: float = 10) -> int:
        with trio.fail_after(timeout):
            await self.closed.wait()
        return self.closed_ms


class RpcStream:
    """`events.follow` over `POST /v1/rpc` (ndjson), read in the background."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers
        self.frames: list[dict[str, Any]] = []
        self.got = trio.Event()
        self.closed = trio.Event()
        self.closed_ms = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        frame = {"id": 1, "op": "events.follow", "params": {}}
        async with self.client.stream("POST", "/v1/rpc", json=frame, headers=self.headers) as resp:
            assert resp.status_code == 200
            task_status.started()
            async for line in resp.aiter_lines():
                if line.strip():
                    self.frames.append(json.loads(line))
                    self.got.set()
                    self.got = trio.Event()
        self.closed_ms = now_ms()
        self.closed.set()

    async def wait_text(self, text: str) -> None:
        with trio.fail_after(10):
            while not any(f.get("event", {}).get("event") == "message" and f["event"]["data"].get("text") == text
                          for f in self.frames):
                await self.got.wait()


async def open_stream(nursery: trio.Nursery, client: httpx.AsyncClient, url: str,
                      headers: dict[str, str] | None = None) -> Stream:
    s = Stream(client, url, headers)
    await nursery.start(s.run)  # connected: the first frame is in
    return s


def says(text: str) -> Any:
    return lambda f: f.get("event") in ("message", "session_message") and f["data"].get("text") == text


async def prove_open(d: DaemonHandle, sid: str, text: str, *streams: Stream, ws: Any = None) -> None:
    """Each stream (and terminal) still delivers: a turn of ``sid`` reaches it."""
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": f"say:{text}"}, headers=bearer(MASTER))
    assert r.status_code == 200, r.text
    for s in streams:
        await s.wait_for(says(text))
    if ws is not None:
        await recv_until(ws, lambda m: text in m.get("data", ""))


async def closed_soon(ws: Any, after_ms: int) -> None:
    """The terminal says why and closes (4401) within LATE_S of ``after_ms``."""
    err = await recv_until(ws, lambda m: m.get("type") == "error")
    assert err[-1]["code"] == "UNAUTHORIZED", err[-1]
    assert await server_closed(ws) == 4401
    assert now_ms() - after_ms < LATE_S * 1000


async def session_of(d: DaemonHandle, headers: dict[str, str], workdir: Path) -> str:
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def revoked_frame(s: Stream) -> dict[str, Any]:
    assert s.frames[-1]["event"] == "revoked", s.frames[-3:]
    return s.frames[-1]


async def test_revoking_a_key_closes_its_streams_and_terminals(daemon_factory: Any, nursery: trio.Nursery,
                                                               workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    alice, bob = await make_key(d, "operator", "alice"), await make_key(d, "operator", "bob")
    a, b = bearer(alice["key"]), bearer(bob["key"])
    sa, sb = await session_of(d, a, workdir), await session_of(d, b, workdir)
    h = d.http
    token = (await h.post("/v1/auth/sse-token", headers=a)).json()["token"]
    spare = (await h.post("/v1/auth/sse-token", headers=a)).json()["token"]
    mine = [await open_stream(nursery, h, "/v1/events", a),
            await open_stream(nursery, h, f"/v1/sessions/{sa}/events", a),
            await open_stream(nursery, h, f"/v1/events?token={token}")]
    rpc = RpcStream(h, a)
    await nursery.start(rpc.run)
    others = [await open_stream(nursery, h, "/v1/events", b),
              await open_stream(nursery, h, "/v1/events", bearer(MASTER))]
    async with open_websocket_url(ws_url(d, sa), extra_headers=list(a.items())) as ws:
        assert (await recv(ws))["type"] == "pane"
        await prove_open(d, sa, "before", *mine, others[1], ws=ws)
        await rpc.wait_text("before")
        t0 = now_ms()
        assert (await h.delete(f"/v1/auth/keys/{alice['id']}", headers=bearer(MASTER))).json() == {"ok": True}
        for s in mine:
            assert await s.wait_closed() - t0 < LATE_S * 1000
            assert revoked_frame(s)["data"]["reason"] == "the API key was revoked"
        await closed_soon(ws, t0)
        with trio.fail_after(10):
            await rpc.closed.wait()
        assert rpc.closed_ms - t0 < LATE_S * 1000
        assert rpc.frames[-1]["ok"] is False and rpc.frames[-1]["error"]["code"] == "UNAUTHORIZED"
    # the master token's stream and the other key's are untouched
    await prove_open(d, sb, "still here", *others)
    assert not any(s.closed.is_set() for s in others)
    # an sse_ token the key minted before it was revoked opens nothing now
    r = await h.get(f"/v1/events?token={spare}")
    assert r.status_code == 401


async def test_a_key_edited_out_of_keys_json_closes_its_streams(daemon_factory: Any, nursery: trio.Nursery,
                                                                tmp_path: Path) -> None:
    """The keys changed by another writer of the store (another daemon on a shared store): noticed within a second."""
    d = await daemon_factory(authToken=MASTER)
    alice, bob = await make_key(d, "operator", "alice"), await make_key(d, "operator", "bob")
    sa = await open_stream(nursery, d.http, "/v1/events", bearer(alice["key"]))
    sb = await open_stream(nursery, d.http, "/v1/events", bearer(bob["key"]))
    t0 = now_ms()
    await d.daemon.store.doc_delete("keys", alice["id"])  # as another writer of the store would
    assert await sa.wait_closed() - t0 < LATE_S * 1000
    assert revoked_frame(sa)["data"]["reason"] == "the API key was revoked"
    assert not sb.closed.is_set()
    assert (await d.http.get("/v1/sessions", headers=bearer(bob["key"]))).status_code == 200


async def test_expiry_closes_streams_and_terminals(daemon_factory: Any, nursery: trio.Nursery, workdir: Path,
                                                   tmp_path: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    # expiresAt set by another writer of the store: the new deadline applies to what is already open
    op = await make_key(d, "operator", "temp")
    sid = await session_of(d, bearer(op["key"]), workdir)
    stream = await open_stream(nursery, d.http, f"/v1/sessions/{sid}/events", bearer(op["key"]))
    async with open_websocket_url(ws_url(d, sid), extra_headers=list(bearer(op["key"]).items())) as ws:
        assert (await recv(ws))["type"] == "pane"
        doc = await d.daemon.store.doc_get("keys", op["id"])
        expires = now_ms() + 1500
        doc["expiresAt"] = expires
        await d.daemon.store.doc_put("keys", op["id"], doc)  # as another writer of the store would
        await prove_open(d, sid, "not yet", stream, ws=ws)
        assert now_ms() < expires, "the machine is too slow for this test's 1.5 s window"
        await closed_soon(ws, expires)
    assert await stream.wait_closed() - expires < LATE_S * 1000 and stream.closed_ms >= expires - 5
    assert revoked_frame(stream)["data"]["reason"] == "the API key expired"
    # a key that expires in 2 s, made through the store's internal helper (the API counts in days)
    info, secret = await d.daemon.keys.create("brief", role="operator", ttl_ms=2000)
    assert info.expiresAt is not None
    s = await open_stream(nursery, d.http, "/v1/events", bearer(secret))
    assert await s.wait_closed() - info.expiresAt < LATE_S * 1000
    assert s.closed_ms >= info.expiresAt - 5  # open until then (the clock's granularity aside)
    assert revoked_frame(s)["data"]["reason"] == "the API key expired"
    assert (await d.http.get("/v1/events", headers=bearer(secret))).status_code == 401


async def test_rotation_closes_the_old_secrets_streams_when_its_grace_ends(
        daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    k = await make_key(d, "operator", "rotating")
    old = bearer(k["key"])
    sid = await session_of(d, old, workdir)
    before = await open_stream(nursery, d.http, f"/v1/sessions/{sid}/events", old)
    async with open_websocket_url(ws_url(d, sid), extra_headers=list(old.items())) as ws:
        assert (await recv(ws))["type"] == "pane"
        r = await d.http.post(f"/v1/auth/keys/{k['id']}/rotate", json={"gracePeriodSeconds": 1},
                              headers=bearer(MASTER))
        grace_end = r.json()["graceExpiresAt"]
        new = bearer(r.json()["key"])
        after = await open_stream(nursery, d.http, f"/v1/sessions/{sid}/events", new)
        await prove_open(d, sid, "within grace", before, after, ws=ws)  # the old secret works for the grace
        await closed_soon(ws, grace_end)
    assert await before.wait_closed() - grace_end < LATE_S * 1000 and before.closed_ms >= grace_end - 5
    assert "grace period ended" in revoked_frame(before)["data"]["reason"]
    await prove_open(d, sid, "new secret", after)  # the new secret's stream stays
    # without a grace period, the old secret's streams close at once
    r = await d.http.post(f"/v1/auth/keys/{k['id']}/rotate", json={"gracePeriodSeconds": 0}, headers=bearer(MASTER))
    t0 = now_ms()
    assert await after.wait_closed() - t0 < LATE_S * 1000
    assert revoked_frame(after)["data"]["reason"] == "the API key was rotated"


@pytest.mark.usefixtures("workdir")
async def test_sso_sign_out_expiry_and_token_expiry_close_streams(daemon_factory: Any, nursery: trio.Nursery,
                                                                    monkeypatch: Any) -> None:
    pytest.importorskip("jwt", reason="PyJWT not installed (pip install 'aegis-py[oidc]')")
    from .test_oidc import sso_daemon

    d, idp = await sso_daemon(daemon_factory, nursery)
    admin = bearer(idp.mint({"aegis_role": "admin", "sub": "root"}))
    watcher = await open_stream(nursery, d.http, "/v1/events", admin)  # a bearer JWT's stream: not signed out

    async def sign_in(browser: httpx.AsyncClient) -> None:
        r = await browser.get("/auth/login")
        r = await browser.get(r.headers["location"])  # the IdP consents and sends the browser back
        r = await browser.get(r.headers["location"])
        assert r.status_code == 302 and browser.cookies.get("aegis_session")

    async with httpx.AsyncClient(base_url=d.daemon.http_url, timeout=20) as browser:
        await sign_in(browser)
        s = await open_stream(nursery, browser, "/v1/events")
        t0 = now_ms()
        assert (await browser.post("/auth/logout")).status_code == 204
        assert await s.wait_closed() - t0 < LATE_S * 1000
        assert revoked_frame(s)["data"]["reason"] == "signed out"
    # a sign-in that expires (8 h in life, 2 s here)
    monkeypatch.setattr(oidc_mod, "SESSION_TTL_S", 2.0)
    async with httpx.AsyncClient(base_url=d.daemon.http_url, timeout=20) as browser:
        await sign_in(browser)
        expires = (await browser.get("/auth/session")).json()["expiresAt"]
        s = await open_stream(nursery, browser, "/v1/events")
        assert await s.wait_closed() - expires < LATE_S * 1000 and s.closed_ms >= expires - 5
        assert revoked_frame(s)["data"]["reason"] == "the sign-in expired"
    assert not watcher.closed.is_set()
    # a bearer token's stream ends when the token stops being accepted: exp plus the 60 s of leeway
    token = idp.mint({"sub": "u-9"}, ttl=-58)
    exp_ms = (json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==").decode())["exp"] + 60) * 1000
    s = await open_stream(nursery, d.http, "/v1/events", bearer(token))
    assert await s.wait_closed() - exp_ms < LATE_S * 1000 and s.closed_ms >= exp_ms - 5
    assert revoked_frame(s)["data"]["reason"] == "the token expired"
