"""Issue 10, item 4: malformed input is a clear 4xx (an error frame on the socket), never a crash or a 500.

Invalid UTF-8, lone surrogates, very deep nesting, numbers that overflow and wrong types, on the control socket
(against a daemon subprocess: one bad frame used to kill it), on every HTTP route, in headers and on the
terminal WebSocket; client errors never count toward alerts; and approve/reject/send/interrupt racing a
session's end is a 409, never a 500."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import open_websocket_url

from aegisd.core import input as core_input
from aegisd.core.errors import ValidationError
from aegisd.core.states import State
from aegisd.surfaces import control
from aegisd.surfaces.http.routes import ROUTES

from .conftest import DaemonHandle, start_daemon_process
from .test_control import AsyncControl, connect
from .test_terminal import recv, ws_url

DEEP = b"[" * 100_000 + b"]" * 100_000
LONE_SURROGATE = b'"a\\ud800b"'


def envelope(r: Any, status: int = 400, code: str = "VALIDATION_ERROR") -> dict[str, Any]:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:300])
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["message"] and body["error"] and re.fullmatch(r"[\w.:-]+", body["requestId"])
    return body


# ---- the control socket ----------------------------------------------------------------------------------
BAD_FRAMES: list[tuple[str, bytes, Any]] = [  # (what, frame, the id the error frame carries)
    ("invalid UTF-8", b'{"id": 1, "op": "hello", "params": {"x": "\xff\xfe"}}', None),
    ("invalid UTF-8 in a key", b'{"id": 1, "op": "hello", "params": {"\xc3\x28": 1}}', None),
    ("lone surrogate", b'{"id": 2, "op": "session.list", "params": {"status": ' + LONE_SURROGATE + b"}}", None),
    ("100k-deep nesting", DEEP, None),
    ("100k-deep params", b'{"id": 3, "op": "hello", "params": {"a": ' + DEEP + b"}}", None),
    ("65-deep params", b'{"id": 4, "op": "hello", "params": {"a": ' + b"[" * 65 + b"]" * 65 + b"}}", 4),
    ("1e400", b'{"id": 5, "op": "session.list", "params": {"page": 1e400}}', None),
    ("2**70", b'{"id": 6, "op": "session.list", "params": {"page": %d}}' % 2**70, 6),
    ("2**70 where any value goes", b'{"id": 7, "op": "hello", "params": {"x": %d}}' % 2**70, 7),
    ("an array", b"[1, 2]", None),
    ("a string", b'"hello"', None),
    ("a number", b"42", None),
    ("null", b"null", None),
    ("params a number", b'{"id": 8, "op": "hello", "params": 5}', 8),
    ("params an array", b'{"id": "nine", "op": "hello", "params": [1]}', "nine"),
    ("params a string", b'{"id": 10, "op": "hello", "params": "x"}', 10),
    ("id an object", b'{"id": {"a": 1}, "op": "hello"}', None),
    ("id a boolean", b'{"id": true, "op": "hello"}', None),
    ("no op", b'{"id": 11}', 11),
    ("op a number", b'{"id": 12, "op": 12}', 12),
    ("wrong param type", b'{"id": 13, "op": "session.list", "params": {"page": "one"}}', 13),
    ("not JSON", b"\x00\x01\x02\xff", None),
    ("two values", b'{"id": 14, "op": "hello"} {"id": 15, "op": "hello"}', None),
]


async def closed_by_daemon(stream: trio.SocketStream, timeout: float = 20) -> None:
    """The daemon closes the connection (a reset when it left our data unread)."""
    with trio.fail_after(timeout):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass


async def read_frame(c: AsyncControl, timeout: float = 20) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return await c.recv()


async def test_socket_bad_frames_fail_the_frame_never_the_daemon(nursery: trio.Nursery, tmp_path: Path,
                                                                 short_tmp: Path) -> None:
    """One invalid-UTF-8 frame used to end the daemon (exit 1, every session gone): msgspec raises
    UnicodeDecodeError, which is not a DecodeError, and nothing between the frame and the root nursery caught it."""
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    c = AsyncControl(await trio.open_unix_socket(str(dp.socket)))
    for what, frame, want_id in BAD_FRAMES:
        await c.send(frame + b"\n")
        got = await read_frame(c)
        assert got["ok"] is False and got["id"] == want_id, (what, got)
        assert got["error"]["code"] == "VALIDATION_ERROR" and got["error"]["status"] == 400, (what, got)
        assert dp.proc.returncode is None, what
    # the same connection, and a new one, still work; the daemon logged no internal error
    await c.send({"id": "after", "op": "hello"})
    assert (await read_frame(c))["result"]["daemon"] == "aegisd"
    c2 = AsyncControl(await trio.open_unix_socket(str(dp.socket)))
    await c2.send({"id": 1, "op": "hello"})
    assert (await read_frame(c2))["ok"] is True
    await c.stream.aclose()
    await c2.stream.aclose()
    dp.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        assert await dp.proc.wait() == 0
        await dp.drained.wait()
    assert dp.log_path is not None
    log = dp.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "internal_error" not in log and "op_failed" not in log, log[-3000:]


async def test_socket_frame_too_large_closes_that_connection_only(daemon: DaemonHandle) -> None:
    c = await connect(daemon)
    other = await connect(daemon)
    big = b'{"id": 1, "op": "hello", "params": {"x": "' + b"a" * (control.MAX_FRAME + 65536)
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            try:
                await c.stream.send_all(big)
            except trio.BrokenResourceError:
                pass  # the daemon stopped reading: expected
        nursery.start_soon(send)
        got = await read_frame(c, 60)
        assert got["id"] is None and got["error"]["code"] == "PAYLOAD_TOO_LARGE"
        await closed_by_daemon(c.stream)  # then it closes this connection
    assert (await other.call("hello"))["ok"] is True
    await c.stream.aclose()
    await other.stream.aclose()


async def test_socket_frame_that_never_ends(daemon: DaemonHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "FRAME_TIMEOUT_S", 0.3)
    c = await connect(daemon)
    await c.send({"id": 1, "op": "hello"})
    assert (await read_frame(c))["ok"] is True  # an idle connection is fine...
    await c.send(b'{"id": 2, "op": "hel')  # ...a frame begun and never finished is not
    got = await read_frame(c)
    assert got["id"] is None and got["error"]["code"] == "VALIDATION_ERROR" and "unfinished" in got["error"]["message"]
    await closed_by_daemon(c.stream)
    await c.stream.aclose()


async def test_socket_half_closed_client_gets_its_answers(daemon: DaemonHandle, workdir: Path) -> None:
    """`printf '{...}\\n' | nc -U -N sock`: the client closes its sending side after the request. The requests
    already received run and answer (they were cancelled, unanswered)."""
    c = await connect(daemon)
    await c.send({"id": 1, "op": "session.create", "params": {"workDir": str(workdir)}})
    await c.send({"id": 2, "op": "hello"})
    await c.stream.send_eof()
    got = {f["id"]: f for f in [await read_frame(c), await read_frame(c)]}
    assert got[1]["ok"] is True and got[1]["result"]["status"] == "idle", got
    assert got[2]["ok"] is True
    with trio.fail_after(10):
        assert await c.stream.receive_some() == b""
    await c.stream.aclose()


async def test_socket_requests_in_flight_are_bounded(daemon: DaemonHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "MAX_IN_FLIGHT", 3)
    c = await connect(daemon)
    for i in range(4):
        await c.send({"id": i, "op": "events.follow", "params": {}})
    got = await read_frame(c)
    assert got["id"] == 3 and got["error"]["code"] == "CAPACITY_EXCEEDED" and got["error"]["status"] == 429
    await c.stream.aclose()
    other = await connect(daemon)  # per connection: another one is served
    assert (await other.call("hello"))["ok"] is True
    await other.stream.aclose()


# ---- core/input.check: its quick path decides as the full walk does ----------------------------------------
class _Str(str):
    pass


class _Int(int):
    pass


DEFECTS = st.sampled_from(["a\ud800b", "\udfff", "é\udc00", 2**63, -2**63 - 1, 2**70, float("nan"), float("inf"),
                           -float("inf")])
PLAIN = (st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=8)
         | st.builds(_Str, st.text(max_size=3)) | st.builds(_Int, st.integers(-2**70, 2**70)))
KEYS = (st.text(max_size=4) | st.sampled_from(["\ud800", "é", "\udfffx"]) | st.integers(-3, 3)
        | st.builds(_Str, st.sampled_from(["k", "\ud800"])))
VALUES = st.recursive(
    PLAIN | DEFECTS,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=24)


def _verdict(fn: Any, value: Any) -> str | None:
    try:
        fn(value, what="input")
    except ValidationError as exc:
        return exc.message
    return None


def _nested(depth: int, leaf: Any, kind: str) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if kind == "dict" else [leaf]
    return leaf


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_check_quick_path_decides_as_the_full_walk(value: Any) -> None:
    """`check` skips the full walk only when it would find nothing; otherwise the walk's own verdict (and
    message) is the answer."""
    if core_input._plain(value, 0):
        assert _verdict(core_input._walk, value) is None
    assert _verdict(core_input.check, value) == _verdict(core_input._walk, value)


@pytest.mark.parametrize("kind", ["dict", "list"])
@pytest.mark.parametrize("depth", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("leaf", [1, "x", "\ud800", 2**64, float("nan"), {"a": [1, 2.5, None, True]}])
def test_check_at_and_beyond_the_depth_limit(kind: str, depth: int, leaf: Any) -> None:
    value = _nested(depth, leaf, kind)
    got = _verdict(core_input.check, value)
    assert got == _verdict(core_input._walk, value)
    leaf_depth = depth + (2 if isinstance(leaf, dict) else 0)  # containers in the leaf itself
    deepest_container = leaf_depth - 1
    if deepest_container >= core_input.MAX_DEPTH:
        assert got is not None and "nested deeper" in got
    elif leaf in (1, "x") or isinstance(leaf, dict):
        assert got is None


def test_check_quick_path_takes_flat_requests() -> None:
    """What requests mostly are (a frame, flat params) takes the quick path; a defect or anything unusual
    goes the whole walk."""
    frame = {"id": 1, "op": "session.get", "params": {"id": "abcd1234", "n": -2**63, "x": 1.5, "ok": None}}
    assert core_input._plain(frame, 0)
    core_input.check(frame)
    for odd in ("é", "\ud800", 2**63, float("inf"), _Str("x"), _Int(1), b"bytes", {1: "int key"}):
        frame["params"]["v"] = odd
        assert core_input._plain(frame, 0) is (odd == {1: "int key"})
    frame["params"] = {"\ud800": 1}
    with pytest.raises(ValidationError, match="surrogate"):
        core_input.check(frame)
    frame["params"] = {"v": 2**63}
    with pytest.raises(ValidationError, match="out of range"):
        core_input.check(frame)
    frame["params"] = {"v": [float("nan")]}
    with pytest.raises(ValidationError, match="not finite"):
        core_input.check(frame)


# ---- HTTP: every route ------------------------------------------------------------------------------------
BAD_BODIES: list[tuple[str, bytes]] = [
    ("invalid UTF-8", b'{"workDir": "\xff\xfe", "text": "\xc3\x28"}'),
    ("invalid UTF-8 in a key", b'{"\xff": 1}'),
    ("lone surrogate", b'{"text": ' + LONE_SURROGATE + b', "name": ' + LONE_SURROGATE + b"}"),
    ("lone surrogate in a key", b'{"\\udc00": 1}'),
    ("100k-deep array", DEEP),
    ("100k-deep object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("65-deep", b'{"a": ' + b"[" * 65 + b"]" * 65 + b"}"),
    ("1e400", b'{"limit": 1e400, "ttlDays": 1e400, "text": 1e400}'),
    ("2**70", b'{"maxTokensPerWindow": %d, "ttlSeconds": %d, "x": %d}' % (2**70, 2**70, 2**70)),
    ("not JSON", b"{not json"),
]


def _bodied_routes() -> list[tuple[str, str]]:
    out = [(method, path) for methods, path, _op, _src, _status in ROUTES for method in methods if method != "GET"]
    return out + [("POST", "/v1/rpc"), ("POST", "/v1/auth/device/authorize"), ("POST", "/v1/auth/device/token")]


def _url(path: str, sid: str) -> str:
    path = path.replace("<sid>", sid).replace("<path:mkey>", "a/b")
    return re.sub(r"<\w+>", "x", path)


async def test_http_bad_bodies_are_400_on_every_route(daemon: DaemonHandle, workdir: Path) -> None:
    sid = (await daemon.create(workdir))["id"]
    for method, path in _bodied_routes():
        for what, body in BAD_BODIES:
            r = await daemon.http.request(method, _url(path, sid), content=body,
                                          headers={"content-type": "application/json"})
            envelope(r)
            assert what  # (named for the failure message above)
    # nothing was created, stored or crashed along the way, and no client error counted as a server fault
    assert list(daemon.manager.records) == [sid] and daemon.manager.records[sid].status.value == "idle"
    trackers = daemon.daemon.alerts.trackers
    assert trackers["api_error"].total == 0 and trackers["session_failure"].total == 0


QUERIES = ["page=1e400", "limit=99999999999999999999999", "page=%FF&limit=%ED%A0%80", "%FF%FE=1",
           "status=%ED%A0%80", "lastEventId=99999999999999999999", "from=1e400&to=-1e400", "since=99999999999999999999",
           "cursor=18446744073709551616", "code=%FF&state=%FF&error=%FF", "format=%00"]


async def test_http_query_strings_and_path_params_never_5xx(daemon: DaemonHandle, workdir: Path) -> None:
    sid = (await daemon.create(workdir))["id"]
    paths = [_url(path, sid) for methods, path, _op, _src, _status in ROUTES if "GET" in methods]
    paths += ["/v1/audit", "/v1/auth/oidc", "/auth/callback", "/auth/session", "/auth/login", "/metrics"]
    for path in paths:
        for q in QUERIES:
            r = await daemon.http.get(f"{path}?{q}")
            assert r.status_code < 500, (path, q, r.status_code, r.text[:300])
            if r.status_code >= 400:
                envelope(r, r.status_code, r.json()["code"])
    for raw in ["%FF", "%ED%A0%80", "%00", "..%2F..%2Fetc", "a" * 5000]:
        for method, tail in [("GET", ""), ("POST", "/send"), ("POST", "/approve"), ("DELETE", ""), ("GET", "/events")]:
            r = await daemon.http.request(method, f"/v1/sessions/{raw}{tail}", json={"text": "x"} if tail == "/send"
                                          else None)
            assert r.json()["code"] in ("SESSION_NOT_FOUND", "NOT_FOUND", "VALIDATION_ERROR"), r.text[:200]
            envelope(r, 400 if r.json()["code"] == "VALIDATION_ERROR" else 404, r.json()["code"])
        for path in [f"/v1/memory/{raw}", f"/v1/templates/{raw}", f"/v1/auth/keys/{raw}/quotas",
                     f"/v1/pipelines/{raw}"]:
            r = await daemon.http.get(path)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
            envelope(r, r.status_code, r.json()["code"])
    assert daemon.daemon.alerts.trackers["api_error"].total == 0


async def test_http_headers(daemon: DaemonHandle, workdir: Path) -> None:
    sid = (await daemon.create(workdir))["id"]
    for path in ["/v1/events", f"/v1/sessions/{sid}/events"]:
        for value in ["99999999999999999999", "1e400", "-1", "\xff", "abc"]:
            r = await daemon.http.get(path, headers={"Last-Event-ID": value.encode("latin-1")})
            envelope(r)
            assert "Last-Event-ID" in r.json()["message"]
    # a request id is echoed only when it is plain printable ASCII; any other is replaced, never refused
    r = await daemon.http.get("/v1/health", headers={"X-Request-Id": b"caf\xe9-\xff"})
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{16}", r.headers["X-Request-Id"])
    r = await daemon.http.post("/v1/sessions", content=b"{bad", headers={"X-Request-Id": b"\xff" * 10,
                                                                          "content-type": "application/json"})
    assert re.fullmatch(r"[0-9a-f]{16}", envelope(r)["requestId"])
    r = await daemon.http.get("/v1/health", headers={"X-Request-Id": "trace-42"})
    assert r.headers["X-Request-Id"] == "trace-42"
    r = await daemon.http.get("/v1/sessions", headers={"Authorization": b"Bearer \xff\xfe"})
    assert r.status_code < 500


# ---- the terminal WebSocket ------------------------------------------------------------------------------
async def test_terminal_refuses_what_would_break_the_session(daemon: DaemonHandle, workdir: Path) -> None:
    """A lone surrogate typed into the terminal used to reach the transcript and crash the session when it was
    stored (UnicodeEncodeError); deep nesting raised RecursionError in the WebSocket handler."""
    sid = (await daemon.create(workdir))["id"]
    async with open_websocket_url(ws_url(daemon, sid)) as ws:
        assert (await recv(ws))["type"] == "pane"
        assert await recv(ws) == {"type": "status", "status": "idle"}
        for message in ['{"type": "input", "text": "a\\ud800b"}', '{"type": "input", "text": "\\udfff"}',
                        "[" * 100_000 + "]" * 100_000, '{"type": "input", "text": ' + "[" * 70 + "]" * 70 + "}",
                        b'{"type": "input", "text": "\xff"}', '{"type": "input", "text": 1e400}']:
            await ws.send_message(message)
            got = await recv(ws)
            assert got["type"] == "error" and got["code"] == "VALIDATION_ERROR", (message[:40], got)
        await ws.send_message(json.dumps({"type": "input", "text": "say:still fine"}))
        with trio.fail_after(10):
            while (await recv(ws)).get("status") != "running":
                pass
    await daemon.wait_event(sid, "turn")
    assert daemon.manager.records[sid].status.value == "idle"
    r = await daemon.http.get(f"/v1/sessions/{sid}/transcript")
    assert [m["text"] for m in r.json()["messages"] if m["role"] == "user"] == ["say:still fine"]
    assert daemon.daemon.alerts.trackers["session_failure"].total == 0


# ---- approve (and reject, interrupt, send) racing the session's end --------------------------------------
ALLOWED = {"SESSION_NOT_LIVE", "NO_PENDING_PERMISSION"}
MAX_ROUNDS = 40


def _answer_ok(verb: str, frame: dict[str, Any]) -> str | None:
    """None for a success with a real result; the error message for an allowed 409; anything else fails."""
    if frame["ok"]:
        assert isinstance(frame["result"], dict) and frame["result"]["ok"] is True, (verb, frame)
        return None
    err = frame["error"]
    assert err["status"] == 409 and err["code"] in ALLOWED, (verb, frame)
    return str(err["message"])


async def test_approve_racing_a_kill_is_409_never_500(daemon: DaemonHandle, workdir: Path) -> None:
    """The kill lands while the approve is inside the session's runner. Made to happen every time: a read
    pipelined just before the approve holds the session's save lock (it marks the transcript read), so the
    runner's approve, having published its decision, waits for that lock; the kill is issued the moment the
    decision is seen on the bus. That approve used to come back with no result: a TypeError, 500."""
    c = await connect(daemon)
    try:
        for rnd in range(4):
            verb = ("approve", "reject")[rnd % 2]
            sid = (await c.call("session.create", workDir=str(workdir), reuse=False,
                                prompt="tool:edit:Edit:f.txt"))["result"]["id"]
            await daemon.wait_status(sid, "permission_prompt")
            async with await daemon.daemon.bus.subscribe(session_id=sid, after_id=daemon.daemon.bus.last_id) as sub:
                await c.send(json.dumps({"id": "read", "op": "session.read", "params": {"id": sid}}).encode() + b"\n"
                             + json.dumps({"id": verb, "op": f"session.{verb}", "params": {"id": sid}}).encode()
                             + b"\n")
                with trio.fail_after(10):
                    async for ev in sub:
                        if ev.event == "permission.decided":
                            break
                await daemon.manager.end(sid, State.KILLED)  # what session.kill does
            got = {f["id"]: f for f in [await read_frame(c), await read_frame(c)]}
            assert got["read"]["ok"] is True
            message = _answer_ok(verb, got[verb])
            assert message is not None and "took effect" in message, got[verb]
    finally:
        await c.stream.aclose()
    assert daemon.daemon.alerts.trackers["api_error"].total == 0


async def test_interrupt_and_send_racing_a_kill_are_409_never_500(daemon: DaemonHandle, workdir: Path) -> None:
    """interrupt/send and a kill pipelined in one write: both handlers start in the same scheduler batch, which
    trio runs in either order; an interrupt that reached the runner as the kill cancelled it answered `null`
    (200). Rounds repeat until that window was hit (about one round in four)."""
    c = await connect(daemon)
    try:
        for rnd in range(MAX_ROUNDS):
            verb = ("interrupt", "send")[rnd % 2]
            sid = (await c.call("session.create", workDir=str(workdir), reuse=False,
                                prompt="tool:edit:Edit:f.txt"))["result"]["id"]
            await daemon.wait_status(sid, "permission_prompt")
            cmd = json.dumps({"id": verb, "op": f"session.{verb}",
                              "params": {"id": sid, **({"text": "more"} if verb == "send" else {})}}).encode()
            kill = json.dumps({"id": "kill", "op": "session.kill", "params": {"id": sid}}).encode()
            await c.send(cmd + b"\n" + kill + b"\n" if rnd % 4 < 2 else kill + b"\n" + cmd + b"\n")
            got = {f["id"]: f for f in [await read_frame(c), await read_frame(c)]}
            assert got["kill"]["ok"] is True, got
            message = _answer_ok(verb, got[verb])
            await daemon.wait_status(sid, "killed")
            if verb == "interrupt" and message is not None and "took effect" in message:
                break
        else:
            raise AssertionError(f"the race window was never hit in {MAX_ROUNDS} rounds")
    finally:
        await c.stream.aclose()


async def test_commands_racing_agent_death_are_409_never_500(daemon: DaemonHandle, workdir: Path) -> None:
    """The agent dies (SIGKILL to its process group) right as approve, interrupt and send arrive over HTTP.
    (An interrupt that found the agent's stdin closed used to be a 502 AGENT_ERROR.)"""
    codes: list[str] = []
    for rnd in range(8):
        sid = (await daemon.create(workdir, reuse=False, prompt="tool:edit:Edit:f.txt"))["id"]
        await daemon.wait_status(sid, "permission_prompt")
        pid = daemon.manager.records[sid].pid
        assert pid
        answers: list[Any] = []

        async def call(method: str, path: str, body: Any = None, answers: list[Any] = answers) -> None:
            answers.append(await daemon.http.request(method, path, json=body))
        async with trio.open_nursery() as nursery:
            if rnd % 2:
                os.killpg(pid, signal.SIGKILL)
            for verb in ("interrupt", "approve"):
                nursery.start_soon(call, "POST", f"/v1/sessions/{sid}/{verb}")
            nursery.start_soon(call, "POST", f"/v1/sessions/{sid}/send", {"text": "x"})
            if rnd % 2 == 0:
                os.killpg(pid, signal.SIGKILL)
        await daemon.wait_status(sid, "crashed")
        for verb in ("approve", "reject", "interrupt", "send"):  # and once it has ended, every verb is a 409
            await call("POST", f"/v1/sessions/{sid}/{verb}", {"text": "x"} if verb == "send" else None)
        for r in answers:
            assert r.status_code < 500, (r.request.url, r.status_code, r.text)
            if r.status_code >= 400:
                assert r.status_code == 409 and r.json()["code"] in ALLOWED, r.text
                codes.append(r.json()["code"])
    assert codes and daemon.daemon.alerts.trackers["api_error"].total == 0
