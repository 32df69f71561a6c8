"""Server-Sent Events over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from aegisd.core.states import State

from .conftest import DaemonHandle


class SseReader:
    def __init__(self, resp: httpx.Response) -> None:
        self.lines = resp.aiter_lines()

    async def next(self) -> tuple[int | None, dict[str, Any]]:
        ev_id: int | None = None
        data = None
        async for line in self.lines:
            if line.startswith("id: "):
                ev_id = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                return ev_id, data
        raise AssertionError("stream ended")

    async def until(self, pred: Any, timeout: float = 10) -> tuple[int | None, dict[str, Any]]:
        with trio.fail_after(timeout):
            while True:
                ev_id, data = await self.next()
                if pred(data):
                    return ev_id, data


async def test_session_stream_payloads(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir)
    sid = s["id"]
    async with daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        r = SseReader(resp)
        first_id, first = await r.next()
        assert first_id is None and first["event"] == "connected" and first["sessionId"] == sid
        await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "tool:execute:Build:make"})
        ev_id, st = await r.until(lambda d: d["event"] == "status" and d["data"]["status"] == "running")
        assert ev_id is not None and st["id"] == ev_id and st["sessionId"] == sid
        _, ap = await r.until(lambda d: d["event"] == "approval")
        assert ap["data"]["toolTitle"] == "Build" and "prompt" in ap["data"]
        await daemon.http.post(f"/v1/sessions/{sid}/approve")
        _, msg = await r.until(lambda d: d["event"] == "message" and d["data"]["contentType"] == "tool_result")
        assert msg["data"]["tool_id"] and msg["data"]["text"] == "ran make"
        await daemon.http.delete(f"/v1/sessions/{sid}")
        _, ended = await r.until(lambda d: d["event"] == "ended")
        assert ended["data"]["reason"] == "killed"


async def test_global_stream_names_and_replay(daemon: DaemonHandle, workdir: Path) -> None:
    async with daemon.http.stream("GET", "/v1/events") as resp:
        r = SseReader(resp)
        _, first = await r.next()
        assert first["event"] == "connected" and "activeSessions" in first["data"]
        s = await daemon.create(workdir, prompt="say:hi")
        _, created = await r.until(lambda d: d["event"] == "session_created")
        assert created["sessionId"] == s["id"]
        mark, _ = await r.until(lambda d: d["event"] == "session_status_change")
        _, m = await r.until(lambda d: d["event"] == "session_message" and d["data"]["text"] == "hi")
    # reconnect with Last-Event-ID: everything after `mark` again, in order, nothing before it
    async with daemon.http.stream("GET", "/v1/events", headers={"Last-Event-ID": str(mark)}) as resp:
        r = SseReader(resp)
        await r.next()  # connected
        ids = []
        with trio.fail_after(10):
            while True:
                ev_id, d = await r.next()
                ids.append(ev_id)
                if d["event"] == "session_message" and d["data"]["text"] == "hi":
                    break
        assert ids[0] == mark + 1 and ids == sorted(ids)


async def test_unknown_session_and_bad_last_event_id(daemon: DaemonHandle) -> None:
    r = await daemon.http.get("/v1/sessions/nope/events")
    assert r.status_code == 404
    r = await daemon.http.get("/v1/events", headers={"Last-Event-ID": "abc"})
    assert r.status_code == 400


async def test_per_ip_and_total_limits(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(sseMaxPerIp=2, sseMaxConnections=3)
    async with d.http.stream("GET", "/v1/events") as a, d.http.stream("GET", "/v1/events") as b:
        assert a.status_code == b.status_code == 200
        r = await d.http.get("/v1/events")
        assert r.status_code == 429 and r.json()["details"]["reason"] == "per_ip_limit"
        assert "retry-after" in r.headers
    # the two streams closed: their slots are free again
    async with d.http.stream("GET", "/v1/events") as c:
        assert c.status_code == 200


async def test_replay_across_restart(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    d1 = await daemon_factory()
    s = await d1.create(workdir, prompt="say:before")
    ev = await d1.wait_event(s["id"], "turn")
    before = ev.id
    d1.shutdown.set()
    with trio.fail_after(15):
        await d1.done.wait()  # type: ignore[attr-defined]
    d2 = await daemon_factory()
    await d2.wait_status(s["id"], State.IDLE, timeout=15)
    async with d2.http.stream("GET", f"/v1/sessions/{s['id']}/events",
                              headers={"Last-Event-ID": str(before - 3)}) as resp:
        r = SseReader(resp)
        await r.next()
        ids = [(await r.next())[0] for _ in range(3)]
        assert ids[0] is not None and ids[0] > before - 3
        assert ids == sorted(ids)


async def test_heartbeat(daemon: DaemonHandle, monkeypatch: Any) -> None:
    from aegisd.surfaces.http import _sse

    monkeypatch.setattr(_sse, "HEARTBEAT_S", 0.2)
    async with daemon.http.stream("GET", "/v1/events") as resp:
        r = SseReader(resp)
        await r.next()
        ev_id, beat = await r.until(lambda d: d["event"] == "heartbeat", timeout=5)
        assert ev_id is None


async def test_stalled_subscriber_delays_nobody(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir)
    sid = s["id"]
    async with httpx.AsyncClient(base_url=daemon.daemon.http_url, timeout=30) as stalled_client:
        async with stalled_client.stream("GET", "/v1/events") as stalled:  # opened, then never read
            assert stalled.status_code == 200
            async with daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as resp:
                r = SseReader(resp)
                await r.next()
                await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "stream:20000;say:done"})
                # the turn completes and the reading subscriber sees its end, whatever the stalled one does
                await daemon.wait_event(sid, "turn", timeout=30)
                _, ev = await r.until(lambda d: d["event"] in ("turn", "overflow"), timeout=30)
                assert ev["event"] in ("turn", "overflow")
