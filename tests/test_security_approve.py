"""Issue 10, item 8: approve addresses the request the user saw. Approve/reject take the pending request's
`requestId` on every surface; when it is not the one pending (decided, behind another, unknown) the answer is
409 PERMISSION_REQUEST_MISMATCH naming the pending one, and nothing is decided. Without it, nothing changes.
The race: two requests pending at once (parallel tool calls), the user looks at the second."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from .conftest import DaemonHandle, start_daemon_process
from .fake_smtp import FakeSmtp
from .fake_telegram import FakeTelegram
from .test_cli import _read_until, ag, ag_on_a_tty
from .test_control import connect
from .test_telegram import CHAT, TOKEN, answered, press
from .test_terminal import recv, recv_until, ws_url

TWO = "tools:2:execute:Deploy:make deploy"


async def approvals(d: DaemonHandle, sid: str, n: int) -> list[dict[str, Any]]:
    """The first n permission requests the session published (event data), in order."""
    got: list[dict[str, Any]] = []
    with trio.fail_after(10):
        async with await d.daemon.bus.subscribe(session_id=sid, after_id=0, maxsize=100_000) as sub:
            async for ev in sub:
                if ev.event == "permission.requested":
                    got.append(ev.data)
                    if len(got) == n:
                        return got
    raise AssertionError("unreachable")


async def two_pending(d: DaemonHandle, workdir: Path, headers: dict[str, str] | None = None) -> tuple[str, str, str]:
    """A session with two permission requests pending at once: (session id, the pending head, the one behind)."""
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": TWO}, headers=headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    first, second = (a["requestId"] for a in await approvals(d, sid, 2))
    assert first != second and d.manager.records[sid].pendingPermission.requestId == first
    return sid, first, second


def pending(d: DaemonHandle, sid: str) -> str | None:
    p = d.manager.records[sid].pendingPermission
    return p.requestId if p is not None else None


def number(d: DaemonHandle, sid: str) -> str:
    """Which of the parallel tool calls (`Deploy 1`, `Deploy 2`) the pending request is."""
    p = d.manager.records[sid].pendingPermission
    assert p is not None
    return p.toolTitle.rsplit(" ", 1)[1]


async def test_http_approve_and_reject_name_the_request(daemon: DaemonHandle, workdir: Path) -> None:
    sid, first, second = await two_pending(daemon, workdir)
    n_first = number(daemon, sid)
    # the race: the user saw the second request; the first is pending: nothing is decided
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve", json={"requestId": second})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "PERMISSION_REQUEST_MISMATCH" and first in body["message"] and second in body["message"]
    assert body["details"] == {"requestId": second, "pendingRequestId": first, "queued": True}
    assert pending(daemon, sid) == first and daemon.manager.records[sid].status.value == "permission_prompt"
    # an unknown request, and a reject: the same
    r = await daemon.http.post(f"/v1/sessions/{sid}/reject", json={"requestId": "perm-0-0"})
    assert r.status_code == 409 and r.json()["code"] == "PERMISSION_REQUEST_MISMATCH"
    assert f"the pending one is {first}" in r.json()["message"] and r.json()["details"]["queued"] is False
    assert pending(daemon, sid) == first
    # the pending one: decided, and the answer says which
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve", json={"requestId": first})
    assert r.status_code == 200 and r.json() == {"ok": True, "optionId": "allow", "requestId": first}
    assert pending(daemon, sid) == second
    # the session's view tells a client what to send
    view = (await daemon.http.get(f"/v1/sessions/{sid}")).json()
    assert view["actionHints"]["approve"]["body"] == {"requestId": second}
    # a request already decided: 409 naming the one pending now
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve", json={"requestId": first})
    assert r.status_code == 409 and second in r.json()["message"] and pending(daemon, sid) == second
    r = await daemon.http.post(f"/v1/sessions/{sid}/reject", json={"requestId": second})
    assert r.status_code == 200 and r.json()["requestId"] == second
    await daemon.wait_status(sid, "idle")
    n_second = "2" if n_first == "1" else "1"
    texts = [m["text"] for m in (await daemon.http.get(f"/v1/sessions/{sid}/transcript?limit=100")).json()["messages"]]
    assert f"permissions: {' '.join(sorted([f'{n_first}=allow', f'{n_second}=reject']))}" in texts
    # nothing pending: with a requestId it is a mismatch, without it the original's answer
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve", json={"requestId": second})
    assert r.status_code == 409 and r.json()["code"] == "PERMISSION_REQUEST_MISMATCH"
    assert "nothing is pending" in r.json()["message"] and r.json()["details"]["pendingRequestId"] is None
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve")
    assert r.status_code == 409 and r.json()["code"] == "NO_PENDING_PERMISSION"
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve", json={"requestId": 5})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"
    # exactly two decisions, each audited with the request it decided
    audit = (await daemon.http.get("/v1/audit?action=permission.*")).json()["records"]
    assert [(a["action"], a["detail"]["requestId"]) for a in audit] == [("permission.approve", first),
                                                                        ("permission.reject", second)]


async def test_without_a_request_id_the_head_is_decided(daemon: DaemonHandle, workdir: Path) -> None:
    """Clients of the original API send no requestId: approve still decides the pending head."""
    sid, first, second = await two_pending(daemon, workdir)
    r = await daemon.http.post(f"/v1/sessions/{sid}/approve")
    assert r.status_code == 200 and r.json()["requestId"] == first and pending(daemon, sid) == second
    r = await daemon.http.post(f"/v1/sessions/{sid}/reject", json={})
    assert r.status_code == 200 and r.json()["requestId"] == second


async def test_socket_and_rpc(daemon: DaemonHandle, workdir: Path) -> None:
    sid, first, second = await two_pending(daemon, workdir)
    c = await connect(daemon)
    r = await c.call("session.approve", id=sid, requestId=second)
    assert r["ok"] is False and r["error"]["code"] == "PERMISSION_REQUEST_MISMATCH" and r["error"]["status"] == 409
    assert r["error"]["details"]["pendingRequestId"] == first and pending(daemon, sid) == first
    r = await daemon.http.post("/v1/rpc", json={"id": 1, "op": "session.reject",
                                                "params": {"id": sid, "requestId": second}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "PERMISSION_REQUEST_MISMATCH"
    assert pending(daemon, sid) == first
    r = await c.call("session.approve", id=sid, requestId=first)
    assert r["ok"] is True and r["result"]["requestId"] == first
    r = await daemon.http.post("/v1/rpc", json={"id": 2, "op": "session.reject",
                                                "params": {"id": sid, "requestId": second}})
    assert r.status_code == 200 and r.json()["result"]["requestId"] == second
    await c.stream.aclose()


async def test_terminal(daemon: DaemonHandle, workdir: Path) -> None:
    sid, first, second = await two_pending(daemon, workdir)
    async with open_websocket_url(ws_url(daemon, sid)) as ws:
        pane = await recv(ws)
        assert pane["type"] == "pane" and pane["pendingRequestId"] == first
        await recv(ws)  # status
        await ws.send_message(json.dumps({"type": "approve", "requestId": second}))
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == "PERMISSION_REQUEST_MISMATCH" and first in err["error"]
        assert pending(daemon, sid) == first
        await ws.send_message(json.dumps({"type": "approve", "requestId": 7}))
        assert (await recv(ws))["code"] == "VALIDATION_ERROR"
        await ws.send_message(json.dumps({"type": "approve", "requestId": first}))
        await ws.send_message(json.dumps({"type": "reject", "requestId": second}))
        await recv_until(ws, lambda m: m == {"type": "status", "status": "idle"})
        # a new request is shown with its id, which decides it
        await ws.send_message(json.dumps({"type": "input", "text": "tool:execute:Run:ls"}))
        shown = (await recv_until(ws, lambda m: "? Allow" in m.get("data", "")))[-1]
        assert shown["requestId"] == pending(daemon, sid)
        await ws.send_message(json.dumps({"type": "approve", "requestId": shown["requestId"]}))
        await recv_until(ws, lambda m: m == {"type": "status", "status": "idle"})
    audit = (await daemon.http.get("/v1/audit?action=permission.*")).json()["records"]
    assert [a["detail"]["requestId"] for a in audit] == [first, second, shown["requestId"]]


async def test_telegram_buttons_decide_their_own_request(daemon_factory: Any, nursery: trio.Nursery,
                                                         workdir: Path) -> None:
    tg = FakeTelegram(TOKEN)
    url = await nursery.start(tg.serve)
    d: DaemonHandle = await daemon_factory(telegram={"botToken": TOKEN, "chatId": CHAT, "apiUrl": url})
    sid, first, second = await two_pending(d, workdir)
    await tg.wait_for(lambda: len([m for m in tg.sent() if "asks to run Deploy" in m["text"]]) == 2)
    asks = [m for m in tg.sent() if "asks to run Deploy" in m["text"]]

    def button(request_id: str, i: int) -> tuple[dict[str, Any], str]:
        """The message sent for that request, and its Approve (0) or Reject (1) button's data."""
        m = next(m for m in asks if any(b["callback_data"].endswith("|" + request_id)
                                        for b in m["reply_markup"]["inline_keyboard"][0]))
        return {"message_id": 100 + asks.index(m), "text": m["text"]}, m["reply_markup"]["inline_keyboard"][0][i][
            "callback_data"]

    # the second message's Approve while the first request waits: nothing decided, the buttons stay
    msg2, approve2 = button(second, 0)
    cq = press(tg, msg2, approve2)
    await tg.wait_for(lambda: answered(tg, cq) is not None)
    assert answered(tg, cq)["text"] == "An earlier request of this session waits: decide it first"  # type: ignore[index]
    assert pending(d, sid) == first and not any(m == "editMessageText" for m, _ in tg.calls)
    # the first message's Approve decides the first; then the second's works
    msg1, approve1 = button(first, 0)
    cq = press(tg, msg1, approve1)
    await tg.wait_for(lambda: answered(tg, cq) is not None)
    assert answered(tg, cq)["text"] == "✅ Approved" and pending(d, sid) == second  # type: ignore[index]
    cq = press(tg, msg2, approve2)
    await tg.wait_for(lambda: answered(tg, cq) is not None)
    assert answered(tg, cq)["text"] == "✅ Approved"  # type: ignore[index]
    await d.wait_status(sid, "idle")
    # a button of a decided request decides nothing, and says so
    _, reject1 = button(first, 1)
    cq = press(tg, msg1, reject1)
    await tg.wait_for(lambda: answered(tg, cq) is not None)
    assert answered(tg, cq)["text"] == "That request is no longer pending"  # type: ignore[index]
    audit = (await d.http.get("/v1/audit?action=permission.*")).json()["records"]
    assert [(a["action"], a["detail"]["requestId"]) for a in audit] == [("permission.approve", first),
                                                                        ("permission.approve", second)]


async def test_email_gives_the_command_for_that_request(daemon_factory: Any, nursery: trio.Nursery,
                                                        workdir: Path) -> None:
    smtp = FakeSmtp()
    port = await nursery.start(smtp.serve)
    d: DaemonHandle = await daemon_factory(email={"smtpUrl": f"smtp://127.0.0.1:{port}", "from": "aegis@corp.example",
                                                  "to": ["ops@corp.example"]})
    s = await d.create(workdir, prompt="tool:execute:Run:make deploy")
    await smtp.wait_for(1)
    request_id = pending(d, s["id"])
    body = smtp.messages[0].get_content()
    assert f"ag approve {s['id'][:8]} --request {request_id}" in body
    assert f"ag reject {s['id'][:8]} --request {request_id}" in body


async def _follow_approvals(socket: Path, sid: str, n: int) -> list[dict[str, Any]]:
    from aegisctl.client import Client

    def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        with contextlib.closing(Client(socket_path=socket).stream("session.follow", id=sid, afterId=0)) as evs:
            for ev in evs:
                d = ev.get("data") or {}
                if ev["event"] == "permission.requested":
                    got.append(d)
                    if len(got) == n:
                        return got
        raise AssertionError("the stream ended")
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(run)


async def test_cli_approve_request(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    r = await ag(dp, "create", TWO, "--cwd", str(work), "--json")
    sid = json.loads(r.stdout)["id"]
    first, second = (a["requestId"] for a in await _follow_approvals(dp.socket, sid, 2))
    short = sid[:8]
    r = await ag(dp, "show", short)
    assert f"ag approve {short} --request {first}" in r.stdout
    r = await ag(dp, "approve", short, "--request", second, check=False)
    assert r.returncode == 1 and "PERMISSION_REQUEST_MISMATCH" in r.stderr and first in r.stderr
    r = await ag(dp, "reject", short, "--request", "perm-0-0", check=False)
    assert r.returncode == 1 and "PERMISSION_REQUEST_MISMATCH" in r.stderr
    r = await ag(dp, "approve", short, "--request", first)
    assert f"Approved (allow): request {first}" in r.stdout
    r = await ag(dp, "reject", short, "--request", second, "--json")
    assert json.loads(r.stdout) == {"ok": True, "optionId": "reject", "requestId": second}
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_ag_run_answers_the_request_it_showed(nursery: trio.Nursery, tmp_path: Path,
                                                    short_tmp: Path) -> None:
    """`ag run` asks about the first request; meanwhile someone decides it elsewhere. The user's "y" must not
    approve the second request, which the terminal has not shown yet."""
    import httpx

    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    async with ag_on_a_tty(dp, "run", TWO + ";say:finished", "--cwd", str(work)) as (proc, master):
        out = await _read_until(master, b"[y/N]")
        async with httpx.AsyncClient(base_url=dp.http_url, timeout=20) as h:
            sessions = (await h.get("/v1/sessions")).json()["sessions"]
            sid = sessions[0]["id"]
            head = sessions[0]["pendingPermission"]
            assert head["toolTitle"].encode() in out  # the prompt shows the pending head
            r = await h.post(f"/v1/sessions/{sid}/reject", json={"requestId": head["requestId"]})  # elsewhere
            assert r.status_code == 200
            second = (await h.get(f"/v1/sessions/{sid}")).json()["pendingPermission"]
            os.write(master, b"y\n")  # the answer to the first, which is no longer pending
            out = await _read_until(master, b"[y/N]")
            assert b"already decided elsewhere" in out and second["toolTitle"].encode() in out
            # the second request was not touched by the "y" meant for the first
            now = (await h.get(f"/v1/sessions/{sid}")).json()
            assert now["status"] == "permission_prompt" and now["pendingPermission"]["requestId"] == \
                second["requestId"]
            os.write(master, b"y\n")
            out = await _read_until(master, b"finished")
            with trio.fail_after(20):
                assert await proc.wait() == 0
            audit = (await h.get("/v1/audit?action=permission.*")).json()["records"]
            assert [(a["action"], a["detail"]["requestId"]) for a in audit] == [
                ("permission.reject", head["requestId"]), ("permission.approve", second["requestId"])]
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_mcp_tools_pass_the_request(daemon: DaemonHandle, workdir: Path) -> None:
    pytest.importorskip("mcp", reason="the MCP Python SDK is not installed (make install)")
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    sid, first, second = await two_pending(daemon, workdir)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aegisctl", "mcp"],
        env={"AEGIS_SOCKET": str(daemon.daemon.socket_path), "PATH": os.environ.get("PATH", ""),
             "HOME": str(workdir)})
    with open(os.devnull, "w") as errlog, trio.fail_after(60):
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name: t for t in (await session.list_tools()).tools}
            for name in ("approve_permission", "reject_permission"):
                assert "requestId" in tools[name].input_schema["properties"]
            status = json.loads((await session.call_tool("get_status", {"sessionId": sid})).content[0].text)
            assert status["pendingPermission"]["requestId"] == first
            res = await session.call_tool("approve_permission", {"sessionId": sid, "requestId": second})
            assert res.is_error and "PERMISSION_REQUEST_MISMATCH" in res.content[0].text
            assert first in res.content[0].text and pending(daemon, sid) == first
            res = await session.call_tool("approve_permission", {"sessionId": sid, "requestId": first})
            assert not res.is_error and json.loads(res.content[0].text)["requestId"] == first
            res = await session.call_tool("reject_permission", {"sessionId": sid, "requestId": second})
            assert not res.is_error and pending(daemon, sid) is None
