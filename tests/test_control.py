"""The control protocol on the real Unix socket."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.errors import Unavailable

from .conftest import DaemonHandle


class AsyncControl:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, frame: Any) -> None:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
        await self.stream.send_all(data)

    async def recv(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "daemon closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        await self.send({"id": op, "op": op, "params": params})
        return await self.recv()


async def connect(d: DaemonHandle) -> AsyncControl:
    return AsyncControl(await trio.open_unix_socket(str(d.daemon.socket_path)))


async def test_socket_permissions(daemon: DaemonHandle) -> None:
    path = daemon.daemon.socket_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.stat().st_mode)


async def test_hello_and_errors(daemon: DaemonHandle) -> None:
    c = await connect(daemon)
    r = await c.call("hello")
    assert r["ok"] is True and r["result"]["protocol"] == 1 and r["result"]["pid"] == os.getpid()
    r = await c.call("no.such.op")
    assert r == {"id": "no.such.op", "ok": False, "error": {"code": "UNKNOWN_OPERATION",
                                                          "message": "unknown operation 'no.such.op'",
                                                          "status": 404}}
    r = await c.call("session.get", id="doesnotexist")
    assert r["error"]["code"] == "SESSION_NOT_FOUND"
    r = await c.call("session.list", limit=1000)
    assert r["error"]["code"] == "VALIDATION_ERROR"
    r = await c.call("session.create", workDir="/", bogus=1)
    assert r["error"]["code"] == "VALIDATION_ERROR" and "bogus" in r["error"]["message"]
    await c.send(b"this is not json\n")
    r = await c.recv()
    assert r["id"] is None and r["error"]["code"] == "VALIDATION_ERROR"
    # the connection survives a bad frame
    assert (await c.call("health"))["ok"] is True
    await c.stream.aclose()


async def test_pipelined_requests_and_prefix_ids(daemon: DaemonHandle, workdir: Path) -> None:
    c = await connect(daemon)
    r = await c.call("session.create", workDir=str(workdir))
    sid = r["result"]["id"]
    for i in range(3):
        await c.send({"id": i, "op": "session.get", "params": {"id": sid[:8]}})
    got = [await c.recv() for _ in range(3)]
    assert sorted(f["id"] for f in got) == [0, 1, 2]
    assert all(f["result"]["id"] == sid for f in got)
    await c.stream.aclose()


async def test_follow_stream(daemon: DaemonHandle, workdir: Path) -> None:
    c = await connect(daemon)
    sid = (await c.call("session.create", workDir=str(workdir)))["result"]["id"]
    f = await connect(daemon)
    await f.send({"id": 7, "op": "session.follow", "params": {"id": sid}})
    await c.call("session.send", id=sid, text="chunks:3:streamed text")
    seen: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while True:
            frame = await f.recv()
            assert frame["id"] == 7
            seen.append(frame["event"])
            if frame["event"]["event"] == "turn":
                break
    chunks = "".join(e["data"]["text"] for e in seen if e["event"] == "chunk")
    assert chunks == "streamed text"
    assert [e["id"] for e in seen] == sorted(e["id"] for e in seen)
    # killing the session ends the stream with an 'ended' event and a final frame
    await c.call("session.kill", id=sid)
    with trio.fail_after(10):
        while True:
            frame = await f.recv()
            if "event" not in frame:
                break
            last = frame["event"]
    assert last["event"] == "ended" and last["data"]["reason"] == "killed"
    assert frame == {"id": 7, "ok": True, "result": {"end": "done"}}
    await c.stream.aclose()
    await f.stream.aclose()


async def test_rpc_over_http_same_frames(daemon: DaemonHandle) -> None:
    r = await daemon.http.post("/v1/rpc", json={"id": 1, "op": "hello", "params": {}})
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["result"]["daemon"] == "aegisd"
    r = await daemon.http.post("/v1/rpc", json={"id": 2, "op": "session.get", "params": {"id": "nope"}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"


async def test_second_daemon_refuses_live_socket(daemon: DaemonHandle, tmp_path: Path) -> None:
    from aegisd.surfaces.control import prepare_socket_path

    with pytest.raises(Unavailable, match="already listening"):
        prepare_socket_path(daemon.daemon.socket_path)
    assert daemon.daemon.socket_path.exists()


async def test_stale_socket_is_replaced(tmp_path: Path, short_tmp: Path) -> None:
    import socket

    from aegisd.surfaces.control import prepare_socket_path

    path = short_tmp / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound but nobody listens: stale
    prepare_socket_path(path)
    assert not path.exists()


async def test_slow_follower_skips_with_marker(daemon: DaemonHandle, workdir: Path, monkeypatch: Any) -> None:
    from aegisd.ops import _streams

    monkeypatch.setattr(_streams, "FOLLOW_BUFFER", 8)
    c = await connect(daemon)
    sid = (await c.call("session.create", workDir=str(workdir)))["result"]["id"]
    f = await connect(daemon)
    await f.send({"id": 1, "op": "session.follow", "params": {"id": sid, "untilIdle": False}})
    # the follower's buffer is tiny and it does not read while the agent floods it
    await c.call("session.send", id=sid, text="say:warmup")
    await daemon.wait_event(sid, "turn")
    await c.call("session.send", id=sid, text="stream:3000")
    await daemon.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 2)
    kinds = []
    with trio.fail_after(10):
        while True:
            frame = await f.recv()
            kinds.append(frame["event"]["event"])
            if frame["event"]["event"] == "turn" and frame["event"]["data"]["turn"] == 2:
                break
    assert "overflow" in kinds  # the follower was told it skipped, and it still saw the turn end
    await c.stream.aclose()
    await f.stream.aclose()


# ---- operations run at once by the reader (issue 14: handlers that never wait, such as session.get) ---------
async def test_session_get_answers_as_every_other_surface(daemon: DaemonHandle, workdir: Path) -> None:
    """Run at once and encoded from its typed result, session.get answers what HTTP (to_builtins, then JSON)
    serves; its errors are the same frames as before."""
    c = await connect(daemon)
    sid = (await c.call("session.create", workDir=str(workdir)))["result"]["id"]
    got = await c.call("session.get", id=sid[:6])
    assert got["ok"] is True and got["id"] == "session.get"
    http = await daemon.http.get(f"/v1/sessions/{sid}")
    assert http.status_code == 200 and got["result"] == http.json()
    rpc = await daemon.http.post("/v1/rpc", json={"id": 1, "op": "session.get", "params": {"id": sid}})
    assert rpc.json()["result"] == got["result"]
    assert "readOffset" not in got["result"] and "promptQueue" not in got["result"]
    await c.send({"id": 9, "op": "session.get", "params": {"id": sid, "bogus": 1}})
    bad = await c.recv()
    assert bad["id"] == 9 and bad["error"]["code"] == "VALIDATION_ERROR" and "bogus" in bad["error"]["message"]
    await c.send({"id": 10, "op": "session.get", "params": {"id": 5}})
    bad = await c.recv()
    assert bad["id"] == 10 and bad["error"]["code"] == "VALIDATION_ERROR"
    await c.send(b'{"id": 11, "op": "session.get", "params": {"id": "\\ud800"}}\n')  # hostile: still checked
    bad = await c.recv()
    assert bad["ok"] is False and bad["error"]["code"] == "VALIDATION_ERROR"
    await c.send({"id": 12, "op": "session.get"})
    bad = await c.recv()
    assert bad["id"] == 12 and bad["error"]["code"] == "VALIDATION_ERROR" and "id" in bad["error"]["message"]
    await c.stream.aclose()


async def test_many_pipelined_reads_in_one_write(daemon: DaemonHandle, workdir: Path) -> None:
    """More reads in one write than requests may run at once on a connection: each runs at once, so none is
    refused, and each is answered in the order sent."""
    from aegisd.surfaces import control

    c = await connect(daemon)
    sid = (await c.call("session.create", workDir=str(workdir)))["result"]["id"]
    n = control.MAX_IN_FLIGHT + 2 * control.RUN_NOW_SLICE + 5
    await c.send(b"".join(json.dumps({"id": i, "op": "session.get", "params": {"id": sid}}).encode() + b"\n"
                          for i in range(n)))
    with trio.fail_after(20):
        got = [await c.recv() for _ in range(n)]
    assert [f["id"] for f in got] == list(range(n))
    assert all(f["ok"] is True and f["result"]["id"] == sid for f in got)
    await c.stream.aclose()


async def test_read_run_at_once_waits_for_audit_records(daemon: DaemonHandle, workdir: Path) -> None:
    """Acknowledged means stored: while an audit record waits to be stored, an answer is held until it is,
    even that of a read run at once."""
    c = await connect(daemon)
    sid = (await c.call("session.create", workDir=str(workdir)))["result"]["id"]
    audit = daemon.daemon.services.audit
    async with audit.writer.lock:  # the store is busy: records wait
        audit.record("test", "test.pending")
        assert audit.writer.pending
        await c.send({"id": 1, "op": "session.get", "params": {"id": sid}})
        await trio.testing.wait_all_tasks_blocked()  # the daemon has read it and waits
        with pytest.raises(BlockingIOError):  # nothing to read yet (the socket does not block)
            os.read(c.stream.socket.fileno(), 1)
    got = await c.recv()
    assert got["ok"] is True and got["result"]["id"] == sid
    assert not audit.writer.pending  # stored before the answer
    assert any(r["action"] == "test.pending" for r in await audit.read_all())
    await c.stream.aclose()
