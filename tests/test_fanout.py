"""Fan-out behaviour (issue 14): what is queued for a subscriber is coalesced into one write without reordering
anything; a slow subscriber never delays the others, and its overflow still works; pipelined control-socket
answers are coalesced in the order they were produced. Behaviour only: no timings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import trio
import trio.testing

from aegisd.bus import EventBus
from aegisd.core import events as ev
from aegisd.core.states import State
from aegisd.surfaces.http._sse import frame

from .conftest import DaemonHandle
from .test_control import connect
from .test_sse import SseReader


def _status(i: int) -> ev.StatusChanged:
    return ev.StatusChanged(status=State.RUNNING, previous=State.IDLE, detail=f"n{i}")


async def test_subscribers_read_everything_queued_in_order_and_share_frames() -> None:
    bus = EventBus()
    a = await bus.subscribe(session_id="s1", maxsize=1000)
    b = await bus.subscribe(maxsize=1000)
    other = await bus.subscribe(session_id="s2", maxsize=1000)
    published = [bus.publish("s1", _status(i)) for i in range(300)]
    got_a = []
    while (e := a.next_nowait()) is not None:
        got_a.append(e)
    got_b = []
    while (e := b.next_nowait()) is not None:
        got_b.append(e)
    assert [e.id for e in got_a] == [e.id for e in published] == [e.id for e in got_b]
    assert other.next_nowait() is None  # another session's subscriber sees none of it
    # one envelope, one encoding: every subscriber's frame is the very same bytes object
    assert all(frame(x, scope="session") is frame(y, scope="session") for x, y in zip(got_a, got_b, strict=True))


async def test_a_slow_subscriber_overflows_alone_and_still_reads_what_it_had() -> None:
    bus = EventBus()
    slow = await bus.subscribe(session_id="s1", maxsize=10)
    fast = await bus.subscribe(session_id="s1", maxsize=1000)
    for i in range(100):  # publishing never waits for anyone
        bus.publish("s1", _status(i))
    assert slow.overflowed and slow.closed and not fast.overflowed
    assert bus.dropped_subscribers == 1
    kept = [e.id async for e in slow]  # what it had queued, then the end
    assert kept == list(range(1, 11))
    got = []
    while (e := fast.next_nowait()) is not None:
        got.append(e.id)
    assert got == list(range(1, 101))


async def test_a_subscriber_of_some_kinds_is_neither_queued_nor_woken_for_the_rest() -> None:
    """The alerts consumer listens for status changes only: a turn's chunks must not wake it, nor fill its
    buffer (it would overflow on a long turn); replay from the ring is filtered the same way."""
    bus = EventBus()
    bus.publish("s1", ev.Chunk(role="assistant", contentType="text", text="before"))
    bus.publish("s1", _status(0))
    only = await bus.subscribe(maxsize=5, kinds=frozenset({ev.StatusChanged.NAME}), after_id=0)
    woken = trio.Event()

    async def consume() -> None:
        got = [await only.__anext__(), await only.__anext__()]  # the replayed status, then the live one
        assert [e.event for e in got] == ["status", "status"]
        woken.set()

    async with trio.open_nursery() as n:
        n.start_soon(consume)
        for i in range(50):  # ten times its buffer in chunks: neither queued nor overflowing
            bus.publish("s1", ev.Chunk(role="assistant", contentType="text", text=f"c{i}"))
            await trio.testing.wait_all_tasks_blocked()
            assert not woken.is_set()
        assert not only.overflowed and not only.closed
        bus.publish("s1", _status(1))
        with trio.fail_after(5):
            await woken.wait()
    assert only.next_nowait() is None


async def test_a_waiting_subscriber_wakes_on_publish_and_on_close() -> None:
    bus = EventBus()
    sub = await bus.subscribe(session_id="s1")
    got: list[int] = []

    async def reader() -> None:
        async for e in sub:
            got.append(e.id)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        bus.publish("s1", _status(1))
        bus.publish("s1", _status(2))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [1, 2]
        bus.close_all()
    assert got == [1, 2] and bus.subscribers == 0


async def test_sse_streams_keep_order_through_a_burst(daemon: DaemonHandle, workdir: Path) -> None:
    """A fast turn (its events coalesced into few writes) reaches two subscribers of the session whole and in
    order, the turn end last."""
    sid = (await daemon.create(workdir))["id"]
    async with daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as r1, \
            daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as r2:
        readers = [SseReader(r1), SseReader(r2)]
        for r in readers:
            assert (await r.next())[1]["event"] == "connected"
        await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "stream:300"})
        seen: list[list[int]] = []
        for r in readers:
            ids: list[int] = []
            with trio.fail_after(20):
                while True:
                    ev_id, data = await r.next()
                    assert ev_id is not None
                    ids.append(ev_id)
                    if data["event"] == "turn":
                        break
            seen.append(ids)
        assert seen[0] == seen[1] == sorted(seen[0]) and len(set(seen[0])) == len(seen[0]) > 300


async def test_control_answers_coalesced_in_the_order_produced(daemon: DaemonHandle, workdir: Path) -> None:
    """Frames answered as they are read (bad frames) come back in the order sent, however they were batched;
    a stream's events keep their order among the answers coalesced with them."""
    c = await connect(daemon)
    try:
        await c.send(b"".join(b'{"id": %d, "op": 5}\n' % i for i in range(200)))
        answers = [await c.recv() for _ in range(200)]
        assert [a["id"] for a in answers] == list(range(200))
        assert all(a["ok"] is False and a["error"]["code"] == "VALIDATION_ERROR" for a in answers)
        sid = (await c.call("session.create", workDir=str(workdir)))["result"]["id"]
        await c.send({"id": "f", "op": "session.follow", "params": {"id": sid}})
        await c.send(b"".join(json.dumps({"id": i, "op": "session.get", "params": {"id": sid}}).encode() + b"\n"
                              for i in range(100)))
        await c.send({"id": "s", "op": "session.send", "params": {"id": sid, "text": "stream:50"}})
        got: dict[object, list[dict[str, Any]]] = {}
        with trio.fail_after(20):
            while not any(f["event"]["event"] == "turn" for f in got.get("f", [])):
                frame_ = await c.recv()
                got.setdefault(frame_["id"], []).append(frame_)
        assert all(got[i][0]["ok"] is True for i in range(100)) and got["s"][0]["ok"] is True
        ids = [f["event"]["id"] for f in got["f"]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) > 50
    finally:
        await c.stream.aclose()


async def test_file_store_flushes_share_fsync_passes(tmp_path: Path, monkeypatch: Any) -> None:
    """Saves are in place (readable by a new daemon) when they return; concurrent flushes share fsync passes
    (group commit) and each returns only once a pass covering its own writes ended."""
    import time

    from aegisd.core.models import SessionRecord
    from aegisd.store._file import FileStore

    store = FileStore(tmp_path)
    await store.open()
    passes: list[set[Path]] = []
    real = FileStore._fsync_all

    def counting(paths: set[Path]) -> None:
        passes.append(set(paths))
        time.sleep(0.02)  # a slow disk: callers pile up behind the running pass
        real(paths)

    monkeypatch.setattr(FileStore, "_fsync_all", staticmethod(counting))
    durable: list[str] = []

    async def save(i: int) -> None:
        await store.save_session(SessionRecord(id=f"s{i}", workDir="/w", createdAt=i))
        assert (tmp_path / "sessions" / f"s{i}.json").exists()  # in the kernel before any fsync
        await store.flush()
        assert any(tmp_path / "sessions" / f"s{i}.json" in p for p in passes)
        durable.append(f"s{i}")

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(save, i)
    assert len(durable) == 20
    assert len(passes) < 20  # shared: at most one pass running, the next covering all that waited
    assert all(tmp_path / "sessions" in p for p in passes)  # the renames' directory too
    await store.flush()  # nothing new: no pass
    assert len(passes) < 20
    await store.close()


async def test_sse_fanout_writes_http11_and_http10_streams_straight_to_their_sockets(
        daemon: DaemonHandle, workdir: Path, monkeypatch: Any) -> None:
    """On plain HTTP/1 the fan-out task writes the streams' events straight to their sockets (chunked for
    HTTP/1.1, as is for HTTP/1.0), whole and in order; this hypercorn's objects are the ones the direct path
    recognises (an upgrade that changes them falls back to ASGI writes and fails this test)."""
    from aegisd.surfaces.http import _direct

    direct: list[int] = []
    real = _direct.DirectBody.write_nowait

    def counting(self: _direct.DirectBody, data: bytes) -> bytes | None:
        direct.append(len(data))
        return real(self, data)

    monkeypatch.setattr(_direct.DirectBody, "write_nowait", counting)
    sid = (await daemon.create(workdir))["id"]
    host, port = daemon.daemon.http_url.split("//", 1)[1].rsplit(":", 1)
    raw = await trio.open_tcp_stream(host, int(port))
    await raw.send_all(f"GET /v1/sessions/{sid}/events HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    buf = b""
    with trio.fail_after(10):
        while b'"connected"' not in buf:
            buf += await raw.receive_some(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower() and b"text/event-stream" in head
    async with daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as resp:
        assert resp.http_version == "HTTP/1.1" and resp.headers.get("transfer-encoding") == "chunked"
        reader = SseReader(resp)
        assert (await reader.next())[1]["event"] == "connected"
        await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "stream:200"})
        chunked: list[int] = []
        with trio.fail_after(20):
            while True:
                ev_id, data = await reader.next()
                assert ev_id is not None
                chunked.append(ev_id)
                if data["event"] == "turn":
                    break
        with trio.fail_after(20):  # the HTTP/1.0 stream: its frames as they are, the turn's last
            while not re.search(rb'"event":"turn"[^\n]*\n\n', buf):
                buf += await raw.receive_some(65536)
        plain: list[int] = []
        for f in buf.split(b"\n\n"):
            if f.startswith(b"id: "):
                plain.append(int(f.split(b"\n", 1)[0][4:]))
                if b'"event":"turn"' in f:
                    break
        await raw.aclose()
    assert chunked == plain == sorted(set(chunked)) and len(chunked) > 200
    assert direct, "the SSE streams were not written directly"


async def test_a_stream_the_fanout_cannot_write_ends_alone(daemon: DaemonHandle, workdir: Path,
                                                           monkeypatch: Any) -> None:
    """A fault while the fan-out task writes one stream ends that stream; the task, the other streams and the
    daemon go on."""
    from aegisd.surfaces.http import _sse

    sid = (await daemon.create(workdir))["id"]
    real = _sse.Feed.drain
    broken: list[_sse.Feed] = []

    def drain(self: _sse.Feed, first: Any = None) -> bytes:
        if self in broken:
            raise RuntimeError("cannot encode")
        return real(self, first)

    monkeypatch.setattr(_sse.Feed, "drain", drain)
    async with daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as bad, \
            daemon.http.stream("GET", f"/v1/sessions/{sid}/events") as good:
        bad_reader, good_reader = SseReader(bad), SseReader(good)
        assert (await bad_reader.next())[1]["event"] == "connected"
        assert (await good_reader.next())[1]["event"] == "connected"
        await trio.testing.wait_all_tasks_blocked()
        fanout_feeds = [f for fs in _fanout_of(daemon)._feeds.values() for f in fs]
        assert len(fanout_feeds) == 2  # both written by the fan-out task
        broken.append(fanout_feeds[0])
        await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:one"})
        ended = []
        for r in (bad_reader, good_reader):
            try:
                await r.until(lambda d: d["event"] == "turn")
            except AssertionError:  # "stream ended"
                ended.append(r)
        assert len(ended) == 1  # the broken one, and only it
        await daemon.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:two"})
        survivor = good_reader if ended[0] is bad_reader else bad_reader
        _, msg = await survivor.until(lambda d: d["event"] == "message" and d["data"]["text"] == "two")
        assert msg["sessionId"] == sid


def _fanout_of(daemon: DaemonHandle) -> Any:
    """The fan-out task's object, found through the running SSE view (the app keeps it in a closure)."""
    import gc

    from aegisd.surfaces.http import _sse

    found = [o for o in gc.get_objects() if isinstance(o, _sse.Fanout) and o.count]
    assert len(found) == 1
    return found[0]
