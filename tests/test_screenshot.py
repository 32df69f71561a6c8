"""POST /v1/sessions/{id}/screenshot: a real headless Chromium shooting a real local page, the SSRF guard,
and the 501 without a browser."""

from __future__ import annotations

import base64
import shutil
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from aegisd.browser.screenshot import find_browser
from aegisd.ops import REGISTRY

from .conftest import DaemonHandle, agent_env
from .test_auth import MASTER, bearer, make_key

PAGE = b"<!doctype html><html><body style='margin:0;background:#00c853'></body></html>"
TALL = b"<!doctype html><html><body style='margin:0'><div style='height:2500px;background:#3454d1'></div>" \
       b"<div style='height:100px;background:#ff0000'></div></body></html>"
# a page that reaches for the cloud metadata service, as a hostile page would
NOSY = b"<!doctype html><html><body><img src='http://169.254.169.254/latest/meta-data/'></body></html>"


async def serve_page(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(65536)
            path = head.split(b" ", 2)[1]
            if path == b"/redirect":
                await stream.send_all(b"HTTP/1.1 302 Found\r\nlocation: http://10.1.2.3:81/\r\n"
                                      b"connection: close\r\ncontent-length: 0\r\n\r\n")
                return
            body = NOSY if path == b"/nosy" else TALL if path == b"/tall" else PAGE
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
                                  b"content-length: %d\r\n\r\n" % len(body) + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/")
    await trio.serve_listeners(handle, listeners)


def pixel(png: bytes, x: int, y: int) -> tuple[int, ...]:
    """One RGB(A) pixel of an 8-bit truecolour PNG (what Chromium writes), undoing the row filters."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(png):
        n, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
        data = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
            assert data[8] == 8 and data[9] in (2, 6)
            bpp = 3 if data[9] == 2 else 4
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    assert 0 <= x < width and 0 <= y < height
    raw, stride, prev = zlib.decompress(idat), width * bpp, bytearray(width * bpp)
    for row in range(y + 1):
        f, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            a, b = (line[i - bpp] if i >= bpp else 0), prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2,
                    4: min((a, b, c), key=lambda v: (abs(a + b - c - v), (a, b, c).index(v)))}[f]
            line[i] = (line[i] + pred) & 0xFF
        prev = line
    return tuple(prev[x * bpp:x * bpp + 3])


@pytest.mark.skipif(find_browser() is None, reason="no headless Chromium (make test installs it where it can)")
async def test_screenshot_of_a_local_page(daemon: DaemonHandle, nursery: trio.Nursery, workdir: Path) -> None:
    url = await nursery.start(serve_page)
    s = await daemon.create(workdir)
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": url, "width": 320,
                                                                            "height": 200}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    # the answer is the operation's declared result, strictly (the conformance test cannot shoot offline)
    msgspec.json.decode(r.content, type=REGISTRY["session.screenshot"].result, strict=True)
    assert (body["width"], body["height"], body["url"], body["fullPage"]) == (320, 200, url, False)
    png = base64.b64decode(body["screenshot"])
    assert pixel(png, 160, 100) == (0, 0xC8, 0x53)  # the page's own colour: it really rendered
    assert (await daemon.http.get("/v1/metrics")).json()["screenshots_taken"] == 1
    assert body["blockedRequests"] == [] and body["loadError"] is None
    # the whole page: 2600 px tall at a 320 px wide viewport, its last band red
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": url + "tall", "fullPage": True,
                                                                            "width": 320, "height": 200}, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["fullPage"] is True and (body["width"], body["height"]) == (320, 2600)
    png = base64.b64decode(body["screenshot"])
    assert pixel(png, 160, 100) == (0x34, 0x54, 0xD1) and pixel(png, 160, 2550) == (0xFF, 0, 0)
    # what the page itself reaches for goes through the same guard: sub-resources and redirects
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": url + "nosy"}, timeout=60)
    assert r.status_code == 200 and any(b.startswith("169.254.169.254:80: ") and "link-local" in b
                                        for b in r.json()["blockedRequests"]), r.json()["blockedRequests"]
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": url + "redirect"}, timeout=60)
    assert r.status_code == 200 and any(b.startswith("10.1.2.3:81: ") and "private" in b
                                        for b in r.json()["blockedRequests"]), r.json()["blockedRequests"]


@pytest.mark.parametrize("url, why", [
    ("file:///etc/passwd", "http"), ("ftp://example.com/", "http"), ("http:///nohost", "http"),
    ("http://169.254.169.254/latest/meta-data", "link-local"), ("http://10.1.2.3/", "private"),
    ("http://192.168.0.1/", "private"), ("http://[fe80::1]/", "link-local"), ("http://printer.local/", ".local"),
    ("http://0.0.0.0/", "unicast"), ("http://[::ffff:10.0.0.1]/", "private"), ("http://127.0.0.1:99999/", "port"),
])
async def test_screenshot_ssrf_guard(daemon_factory: Any, workdir: Path, tmp_path: Path, url: str,
                                     why: str) -> None:
    # the guard runs before any browser starts: /bin/true stands in for one
    d = await daemon_factory(env=agent_env(tmp_path, AEGIS_BROWSER=shutil.which("true") or "/bin/true"))
    s = await d.create(workdir)
    r = await d.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": url})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", r.text
    assert why in r.json()["error"]


async def test_screenshot_loopback_needs_a_trusted_caller(daemon_factory: Any, workdir: Path,
                                                         tmp_path: Path) -> None:
    d = await daemon_factory(authToken=MASTER, env=agent_env(tmp_path, AEGIS_BROWSER=shutil.which("true") or ""))
    k = await make_key(d, "operator", "op")
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(k["key"]))
    sid = r.json()["id"]
    r = await d.http.post(f"/v1/sessions/{sid}/screenshot", json={"url": "http://127.0.0.1:9/"},
                          headers=bearer(k["key"]))
    assert r.status_code == 400 and "loopback" in r.json()["error"]
    # the master token may: the stand-in browser then makes no picture, which is said plainly
    r = await d.http.post(f"/v1/sessions/{sid}/screenshot", json={"url": "http://127.0.0.1:9/"},
                          headers=bearer(MASTER))
    assert r.status_code == 400 and "made no screenshot" in r.json()["error"]
    r = await d.http.post(f"/v1/sessions/{sid}/screenshot", json={}, headers=bearer(MASTER))
    assert r.status_code == 400 and "url is required" in r.json()["error"]


async def test_screenshot_without_a_browser(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    d = await daemon_factory(env=agent_env(tmp_path, AEGIS_BROWSER="/nonexistent/chromium"))
    s = await d.create(workdir)
    r = await d.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": "http://example.com/"})
    assert r.status_code == 501 and r.json()["code"] == "NOT_IMPLEMENTED"
    assert "AEGIS_BROWSER=/nonexistent/chromium" in r.json()["error"]


async def test_guarded_proxy_connect_and_forward(nursery: trio.Nursery) -> None:
    """The screenshot browser's egress guard on its own: CONNECT (https) tunnels only to allowed addresses;
    plain requests are forwarded one per connection, without proxy headers."""
    from aegisd.browser.egress import GuardedProxy
    from aegisd.browser.screenshot import Guard, Reach

    seen: list[bytes] = []

    async def upstream(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        seen.append(data)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
        await stream.aclose()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    up_port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, upstream, listeners)
    proxy = GuardedProxy(Guard(Reach(loopback_ports=frozenset({up_port}), trusted=True)).addresses)
    port = await nursery.start(proxy.serve)

    async def exchange(request: bytes) -> bytes:
        with trio.fail_after(10):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            async with s:
                await s.send_all(request)
                out = b""
                async for chunk in s:
                    out += chunk
                return out

    r = await exchange(b"CONNECT 10.9.8.7:443 HTTP/1.1\r\nHost: 10.9.8.7:443\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 403") and b"a private network" in r
    r = await exchange(f"GET http://127.0.0.1:{up_port}/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Proxy-Connection: keep-alive\r\n\r\n".encode())
    assert r.endswith(b"hi") and seen[-1].startswith(b"GET /x?y=1 HTTP/1.1\r\n")
    assert b"Proxy-Connection" not in seen[-1] and b"Connection: close" in seen[-1]
    with trio.fail_after(10):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        async with s:
            await s.send_all(f"CONNECT 127.0.0.1:{up_port} HTTP/1.1\r\n\r\n".encode())
            assert (await s.receive_some(100)).startswith(b"HTTP/1.1 200 Connection Established")
            await s.send_all(b"GET /tunnelled HTTP/1.1\r\n\r\n")
            reply = b""
            async for chunk in s:
                reply += chunk
    assert reply.endswith(b"hi") and seen[-1].startswith(b"GET /tunnelled")
    r = await exchange(b"GET http://no-such-host.invalid/ HTTP/1.1\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 502")  # a name that does not resolve is a failure, not a refusal
    assert proxy.blocked == ["10.9.8.7:443: it resolves to 10.9.8.7, a private network"]
