"""GET /v1/sessions/{id}/terminal over a real WebSocket (trio-websocket): pane, live stream, input, approvals,
the session's end, and authentication by header, sse_ token or first message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .conftest import DaemonHandle
from .test_auth import MASTER, bearer, make_key


def ws_url(d: DaemonHandle, sid: str, query: str = "") -> str:
    return d.daemon.http_url.replace("http://", "ws://") + f"/v1/sessions/{sid}/terminal{query}"


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def recv_until(ws: Any, pred: Any, timeout: float = 10) -> list[dict[str, Any]]:
    got = []
    with trio.fail_after(timeout):
        while True:
            got.append(json.loads(await ws.get_message()))
            if pred(got[-1]):
                return got


async def server_closed(ws: Any, timeout: float = 10) -> int:
    """Wait for the server to close; the close code. trio-websocket 0.12.2's client never closes its TCP
    stream when the server closes first (its reader stops at EOF without aclose), so it is closed here."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            code: int = exc.reason.code
    await ws._stream.aclose()
    return code


async def test_terminal_session(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="say:first words")
    # the turn's last event (it is replayed if it came already): the terminal then starts on a quiet session
    await daemon.wait_event(s["id"], "status", match=lambda e: e.data["status"] == "idle"
                            and e.data["previous"] == "running")
    async with open_websocket_url(ws_url(daemon, s["id"])) as ws:
        pane = await recv(ws)
        assert pane["type"] == "pane" and "> say:first words" in pane["content"] and "first words" in pane["content"]
        assert await recv(ws) == {"type": "status", "status": "idle"}
        await ws.send_message(json.dumps({"type": "input", "text": "say:streamed reply\r"}))
        got = await recv_until(ws, lambda m: m == {"type": "status", "status": "idle"})
        assert {"type": "stream", "data": "\n> say:streamed reply\n"} in got
        assert "streamed reply" in "".join(m.get("data", "") for m in got if m["type"] == "stream")
        assert {"type": "status", "status": "running"} in got
        # a permission prompt shows as a question; approve answers it
        await ws.send_message(json.dumps({"type": "input", "text": "tool:execute:Run:ls"}))
        got = await recv_until(ws, lambda m: m.get("status") == "permission_prompt")
        got += await recv_until(ws, lambda m: "? Allow" in m.get("data", ""))
        await ws.send_message(json.dumps({"type": "approve"}))
        await recv_until(ws, lambda m: m == {"type": "status", "status": "idle"})
        # Ctrl-C interrupts a running turn
        await ws.send_message(json.dumps({"type": "input", "text": "wait-for-cancel"}))
        await recv_until(ws, lambda m: m == {"type": "status", "status": "running"})
        await ws.send_message(json.dumps({"type": "input", "text": "\x03"}))
        await recv_until(ws, lambda m: m == {"type": "status", "status": "idle"})
        # bad messages are answered, and the connection stays
        await ws.send_message("not json")
        assert (await recv(ws))["error"].startswith("the message is not valid JSON")
        await ws.send_message(json.dumps({"type": "dance"}))
        assert "unknown message type" in (await recv(ws))["error"]
        await ws.send_message(json.dumps({"type": "reject"}))
        assert (await recv(ws))["code"] == "NO_PENDING_PERMISSION"
        await ws.send_message(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        # the session ends: the client hears it and the server closes
        await daemon.http.delete(f"/v1/sessions/{s['id']}")
        got = await recv_until(ws, lambda m: m["type"] == "ended")
        assert got[-1]["status"] == "killed"
        assert await server_closed(ws) == 1000
    # plain HTTP on the WebSocket route: a clear 4xx, not a hang
    r = await daemon.http.get(f"/v1/sessions/{s['id']}/terminal")
    assert 400 <= r.status_code < 500 and r.json()["code"], r.text
    # an ended session: pane, status, ended, close
    async with open_websocket_url(ws_url(daemon, s["id"])) as ws:
        kinds = [(await recv(ws))["type"] for _ in range(3)]
        assert kinds == ["pane", "status", "ended"]
        assert await server_closed(ws) == 1000


async def test_terminal_auth(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(MASTER))
    sid = r.json()["id"]
    # no credentials: the first message must authenticate
    async with open_websocket_url(ws_url(d, sid)) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": MASTER}))
        assert (await recv(ws))["type"] == "pane"
    async with open_websocket_url(ws_url(d, sid)) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": "wrong"}))
        err = await recv(ws)
        assert err["code"] == "UNAUTHORIZED"
        assert await server_closed(ws) == 4401
    # a single-use sse_ token in the query
    token = (await d.http.post("/v1/auth/sse-token", headers=bearer(MASTER))).json()["token"]
    async with open_websocket_url(ws_url(d, sid, f"?token={token}")) as ws:
        assert (await recv(ws))["type"] == "pane"
    async with open_websocket_url(ws_url(d, sid, f"?token={token}")) as ws:  # used up
        assert (await recv(ws))["code"] == "UNAUTHORIZED"
        assert await server_closed(ws) == 4401
    # keys see their own sessions only: another key is refused, the owner gets in (with a header here)
    op = await make_key(d, "operator", "owner")
    viewer = await make_key(d, "viewer", "watcher")
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False}, headers=bearer(op["key"]))
    own = r.json()["id"]
    async with open_websocket_url(ws_url(d, own), extra_headers=[("Authorization", f"Bearer {op['key']}")]) as ws:
        assert (await recv(ws))["type"] == "pane"
        await recv(ws)
        await ws.send_message(json.dumps({"type": "input", "text": "say:mine"}))
        await recv_until(ws, lambda m: "mine" in m.get("data", "") and not m["data"].startswith("\n>"))
    async with open_websocket_url(ws_url(d, own)) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": viewer["key"]}))
        assert (await recv(ws))["code"] == "SESSION_FORBIDDEN"
        assert await server_closed(ws) == 4403
    # unknown session
    async with open_websocket_url(ws_url(d, "no-such-session")) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": MASTER}))
        assert (await recv(ws))["code"] == "SESSION_NOT_FOUND"
        assert await server_closed(ws) == 4404
