"""The pollers' reads answered without quart's request machinery (aegisd/surfaces/http/_lean.py, issue 14): each
answer is the one quart gives to the same request, status, headers and body, whatever the outcome (served,
304, refused by the browser guard, unauthenticated, not found, invalid, a server fault), and everything the
lean path does not take still reaches quart.

Each request is sent twice on a raw connection: as it is (the lean path takes it), and with a two-byte body,
which the lean path leaves to quart (quart drains it; a GET's body means nothing to the views). The answers
must be equal but for the Date header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import pytest
import trio

from aegisd.surfaces.http import _lean

from .conftest import DaemonHandle

MASTER = "c" * 40
APP = "http://app.example:3000"
AUTH = {"Authorization": f"Bearer {MASTER}"}


@pytest.fixture
def lean_served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the lean path answered (it answers False to the others, having done nothing)."""
    served: list[str] = []
    real = _lean.LeanReads.serve

    async def counting(self: _lean.LeanReads, scope: Any, send: Any) -> bool:
        took = await real(self, scope, send)
        if took:
            served.append(scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else ""))
        return took

    monkeypatch.setattr(_lean.LeanReads, "serve", counting)
    return served


async def _exchange(url: str, target: str, headers: dict[str, str], *, body: bytes = b"",
                    version: str = "1.1") -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on a new TCP connection, written by hand; the answer read with h11."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    lines = [f"GET {target} HTTP/{version}"] + [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(raw)
        status, got, data = 0, [], b""
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got = [(k.decode(), v.decode()) for k, v in event.headers if k != b"date"]
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, got, data


async def _both(url: str, target: str, headers: dict[str, str], version: str = "1.1",
                volatile: tuple[str, ...] = ()) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer of the lean path and quart's to the same request: equal (but for Date; ``volatile``: fields
    of the JSON body that move with the clock, and so the ETag and length)."""
    lean = await _exchange(url, target, headers, version=version)
    full = await _exchange(url, target, {**headers, "Content-Type": "application/json"}, body=b"{}",
                           version=version)

    def steady(answer: tuple[int, list[tuple[str, str]], bytes]) -> Any:
        if not volatile:
            return answer
        body = {k: v for k, v in json.loads(answer[2]).items() if k not in volatile}
        return answer[0], [(k, v) for k, v in answer[1] if k not in ("etag", "content-length")], body

    assert steady(lean) == steady(full), (target, headers, lean, full)
    return lean


async def test_lean_reads_answer_as_quart_does(daemon_factory: Any, workdir: Path, lean_served: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    daemon: DaemonHandle = await daemon_factory(authToken=MASTER, allowedOrigins=[APP])
    url = daemon.daemon.http_url
    r = await daemon.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=AUTH)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    host = {"Host": urlsplit(url).netloc}
    one = {**host, **AUTH, "X-Request-Id": "lean-1"}

    status, headers, body = await _both(url, "/v1/sessions", one)
    assert status == 200 and sid.encode() in body
    names = {k for k, _ in headers}
    assert {"etag", "x-request-id", "x-content-type-options", "x-frame-options", "cache-control"} <= names
    tag = dict(headers)["etag"]
    assert (await _both(url, "/v1/sessions", {**one, "If-None-Match": tag}))[0] == 304
    assert (await _both(url, f"/v1/sessions/{sid}", one))[0] == 200
    moving = ("lastActivityAgo", "sessionAge")
    assert (await _both(url, f"/v1/sessions/{sid}/health", one, volatile=moving))[0] == 200
    assert (await _both(url, "/v1/sessions/stats", one))[0] == 200  # a route of its own, not a session id
    assert (await _both(url, "/v1/sessions?page=2&limit=1", one))[0] == 200
    status, _, body = await _both(url, "/v1/sessions?status=bogus", one)
    assert status == 400 and b"lean-1" in body
    assert (await _both(url, "/v1/sessions/no-such-session", one))[0] == 404
    # who may not read: no credential, a wrong one, a rebinding Host, a foreign page
    assert (await _both(url, "/v1/sessions", {**host, "X-Request-Id": "lean-2"}))[0] == 401
    wrong = {**host, "Authorization": "Bearer " + "x" * 40, "X-Request-Id": "lean-2"}
    assert (await _both(url, "/v1/sessions", wrong))[0] == 401
    assert (await _both(url, "/v1/sessions", {**one, "Host": f"evil.example:{urlsplit(url).port}"}))[0] == 421
    assert (await _both(url, "/v1/sessions", {**one, "Origin": "https://evil.example"}))[0] == 403
    assert (await _both(url, "/v1/sessions", {**one, "Host": ""}))[0] == 200  # no name: nothing to rebind
    # an allowed origin gets its CORS headers
    status, headers, _ = await _both(url, "/v1/sessions", {**one, "Origin": APP})
    assert status == 200 and dict(headers)["access-control-allow-origin"] == APP
    # HTTP/1.0 without a Host (quart supplies an empty one): served, as docs/security.md says
    assert (await _both(url, "/v1/sessions", {**AUTH, "X-Request-Id": "lean-3"}, version="1.0"))[0] == 200
    assert len(lean_served) == 15
    # routes quart keeps: a trailing slash, a read that waits, a HEAD
    assert (await _exchange(url, "/v1/sessions/", one))[0] in (301, 308, 404)
    assert (await _exchange(url, f"/v1/sessions/{sid}/wait?timeoutSeconds=0.1", one))[0] == 200
    assert len(lean_served) == 15
    # a server fault: the internal envelope, logged and counted, on both paths
    api_errors = daemon.daemon.services.alerts.trackers["api_error"]
    before = api_errors.total

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the store broke")

    monkeypatch.setattr(daemon.manager, "list", broken)
    status, _, body = await _both(url, "/v1/sessions", one)
    assert status == 500 and b"lean-1" in body and b"the store broke" not in body
    assert len(lean_served) == 16 and api_errors.total == before + 2


def test_a_client_cannot_name_its_own_address() -> None:
    """The client's address is the connection's: a Remote-Addr header the client sends changes nothing (the
    loopback trust and the per-IP limits read it)."""
    scope = {"client": ("10.0.0.5", 40000), "headers": [(b"remote-addr", b"127.0.0.1"), (b"host", b"x")],
             "http_version": "1.1", "scheme": "http", "path": "/v1/sessions", "query_string": b"a=1&a=2&b="}
    req = _lean.LeanRequest(scope, _lean.request_headers(scope, None))
    assert req.remote_addr == "10.0.0.5" and req.headers.get("Host") == "x"
    assert req.args.getlist("a") == ["1", "2"] and req.args["b"] == ""  # werkzeug's parse, blank values kept
    # HTTP/1.0 without a Host: an empty one, as quart reads it; with one, the client's
    old = {**scope, "http_version": "1.0", "headers": []}
    assert _lean.request_headers(old, None).get("Host") == ""
    assert _lean.request_headers({**old, "headers": [(b"host", b"h")]}, None).get("Host") == "h"


def test_an_app_with_other_hooks_gets_no_lean_path() -> None:
    """A request hook the lean path does not run itself would be skipped: such an app gets none."""
    from quart_trio import QuartTrio

    app = QuartTrio("t")
    parts: dict[str, Any] = {"guard": lambda req: None, "secure": lambda resp, req: resp,
                             "answer_error": lambda exc, req: None}

    @app.before_request
    async def one() -> None: ...

    @app.after_request
    async def two(resp: Any) -> Any:
        return resp

    assert _lean.LeanReads.of(app, {}, expected_hooks=2, **parts) is not None

    @app.teardown_request
    async def three(exc: Any) -> None: ...

    assert _lean.LeanReads.of(app, {}, expected_hooks=2, **parts) is None
