"""Issue 10, item 2: a screenshotted page cannot reach the daemon. Whoever asks, the page and everything it
loads (fetch, images, forms, 307 redirects, websockets, https through CONNECT) are refused the daemon's own
listen addresses; loopback other than that only for a trusted caller, and then only the URL's own port and the
ports of `screenshotLoopbackPorts`. Real Chromium, a real hostile page, the real daemon."""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import trio

from aegisd.browser.screenshot import Reach, find_browser, is_local_address

from .conftest import DaemonHandle, agent_env
from .test_auth import MASTER, bearer, make_key
from .test_screenshot import pixel

needs_browser = pytest.mark.skipif(find_browser() is None,
                                   reason="no headless Chromium (make test installs it where it can)")


class Recorder:
    """A loopback HTTP server that answers a small PNG-less 200 and remembers the paths asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    head += chunk
                self.paths.append(head.split(b" ", 2)[1].decode())
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                                      b"content-length: 2\r\n\r\nok")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(handle, listeners)


class HostilePage:
    """The dev server of a hostile agent: its page's script drives the daemon's API while the screenshot
    loads. The page's load event waits (an image, /gate) until the script reports (/done) that every attack
    settled, so the screenshot is taken only after all of them were tried."""

    def __init__(self, *, targets: list[str], sid: str, workdir: Path, extra_images: list[str]) -> None:
        self.targets, self.sid, self.workdir, self.extra_images = targets, sid, workdir, extra_images
        self.done = trio.Event()
        self.report: list[str] = []
        self.paths: list[str] = []

    def page(self) -> bytes:
        create = json.dumps({"workDir": str(self.workdir), "prompt": "pwned", "permissionMode": "bypassPermissions"})
        attacks, forms, images = [], [], []
        for i, base in enumerate(self.targets):
            approve = f"{base}/v1/sessions/{self.sid}/approve"
            attacks += [
                f"fetch('{base}/v1/sessions', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, "
                f"body: {json.dumps(create)}}})",
                f"fetch('{base}/v1/sessions', {{method: 'POST', mode: 'no-cors', "
                f"headers: {{'Content-Type': 'text/plain'}}, body: {json.dumps(create)}}})",
                f"fetch('{approve}', {{method: 'POST', mode: 'no-cors'}})",
                f"new Promise((ok) => {{ const f = document.getElementById('sink{i}'); f.onload = ok; "
                f"document.getElementById('form{i}').submit(); }})",
                # a same-origin POST that the dev server redirects (307 keeps the method and body) to the API
                f"fetch('/r307/{i}', {{method: 'POST', mode: 'no-cors', headers: {{'Content-Type': 'text/plain'}}, "
                f"body: {json.dumps(create)}}})",
                # https: the browser asks the proxy for a CONNECT tunnel
                f"fetch('{base.replace('http://', 'https://')}/v1/sessions', {{method: 'POST', mode: 'no-cors', "
                f"body: {json.dumps(create)}}})",
                # the terminal WebSocket, which approves with one message
                f"new Promise((ok) => {{ const ws = new WebSocket('{base.replace('http://', 'ws://')}"
                f"/v1/sessions/{self.sid}/terminal'); ws.onopen = () => ws.send(JSON.stringify({{type: 'approve'}})); "
                "ws.onmessage = () => ws.close(); ws.onclose = ok; ws.onerror = ok; })",
            ]
            forms.append(f"<iframe name='sink{i}' id='sink{i}' style='display:none'></iframe>"
                         f"<form id='form{i}' method='post' action='{approve}' target='sink{i}'>"
                         f"<input name='optionId' value='allow'></form>")
            images.append(f"<img src='{approve}'>")
        images += [f"<img src='{u}'>" for u in self.extra_images]
        script = ("const report = (what) => { new Image().src = '/done?' + encodeURIComponent(what); };\n"
                  f"Promise.allSettled([{', '.join(attacks)}])"
                  ".then((r) => report(r.map((x) => x.status + ':' + (x.reason || (x.value && x.value.type)))"
                  ".join(',')));")
        return ("<!doctype html><html><body style='margin:0;background:#00c853'>" + "".join(forms)
                + "".join(images) + "<img src='/gate' style='display:none'>"
                + f"<script>{script}</script></body></html>").encode()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    head += chunk
                path = head.split(b" ", 2)[1].decode()
                self.paths.append(path)
                if path.startswith("/done"):
                    self.report.append(unquote(urlsplit(path).query))
                    self.done.set()
                    body, kind = b"", b"text/plain"
                elif path.startswith("/r307/"):
                    target = self.targets[int(path.rsplit("/", 1)[1])]
                    await stream.send_all(f"HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}/v1/sessions\r\n"
                                          "connection: close\r\ncontent-length: 0\r\n\r\n".encode())
                    return
                elif path == "/gate":
                    with trio.move_on_after(30):  # the test fails on the missing report, not here
                        await self.done.wait()
                    body, kind = b"", b"text/plain"
                else:
                    body, kind = self.page(), b"text/html"
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\nconnection: close\r\n"
                                      b"content-length: %d\r\n\r\n" % (kind, len(body)) + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/")
        await trio.serve_listeners(handle, listeners)


async def _pending_session(d: DaemonHandle, workdir: Path,
                           headers: dict[str, str] | None = None) -> tuple[str, str]:
    """A session waiting for a decision (its id, the request's id): what the hostile page would approve."""
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "tool:execute:Run rm:rm -rf x"},
                          headers=headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    await d.wait_status(sid, "permission_prompt")
    return sid, d.manager.records[sid].pendingPermission.requestId


def _port(d: DaemonHandle) -> int:
    return urlsplit(d.daemon.http_url).port or 0


@needs_browser
async def test_a_hostile_page_cannot_drive_the_daemon_during_a_trusted_screenshot(
        daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    other, allowed = Recorder(), Recorder()
    await nursery.start(other.serve)
    await nursery.start(allowed.serve)
    d = await daemon_factory(screenshotLoopbackPorts=[allowed.port])
    port = _port(d)
    sid, request_id = await _pending_session(d, workdir)
    page = HostilePage(targets=[f"http://127.0.0.1:{port}", f"http://localhost:{port}"], sid=sid, workdir=workdir,
                       extra_images=[f"http://127.0.0.1:{other.port}/other.png",
                                     f"http://127.0.0.1:{allowed.port}/allowed.png"])
    url = await nursery.start(page.serve)
    # a local caller with no token: trusted (the session's dev server is the main use of screenshots)
    r = await d.http.post(f"/v1/sessions/{sid}/screenshot", json={"url": url, "width": 320, "height": 200},
                          timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    # the dev-server page itself rendered
    assert pixel(base64.b64decode(body["screenshot"]), 160, 100) == (0, 0xC8, 0x53)
    assert body["loadError"] is None
    # every attack was tried (the page's script reported) ...
    assert page.report and len(page.report[0].split(",")) == 14, page.report
    # ... and none reached the daemon: nothing created, the pending request still pending
    sessions = (await d.http.get("/v1/sessions")).json()["sessions"]
    assert [s["id"] for s in sessions] == [sid]
    rec = (await d.http.get(f"/v1/sessions/{sid}")).json()
    assert rec["status"] == "permission_prompt" and rec["pendingPermission"]["requestId"] == request_id
    audit = (await d.http.get("/v1/audit")).json()["records"]
    assert [(a["action"], a.get("sessionId")) for a in audit
            if a["action"] in ("session.create", "permission.approve")] == [("session.create", sid)]
    # the refusals are listed, as the daemon's own address
    blocked = body["blockedRequests"]
    for target in (f"127.0.0.1:{port}", f"localhost:{port}"):
        mine = [b for b in blocked if b.startswith(target + ": ")]
        assert mine and all("aegisd's own address" in b for b in mine), blocked
    # another loopback port is refused (not the URL's, not configured); a configured one is allowed
    assert any(b.startswith(f"127.0.0.1:{other.port}: ") and "loopback port" in b for b in blocked), blocked
    assert other.paths == []
    assert allowed.paths == ["/allowed.png"]


@needs_browser
async def test_a_wildcard_bound_daemon_is_refused_at_every_local_address(
        daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    d = await daemon_factory(host="0.0.0.0", authToken=MASTER)
    port = _port(d)
    local = [a for a in _interface_addresses() if not a.is_loopback][:1]
    targets = [f"http://127.0.0.2:{port}", *(f"http://{a if a.version == 4 else f'[{a}]'}:{port}" for a in local)]
    sid, _ = await _pending_session(d, workdir, bearer(MASTER))
    page = HostilePage(targets=targets, sid=sid, workdir=workdir, extra_images=[])
    url = await nursery.start(page.serve)
    r = await d.http.post(f"/v1/sessions/{sid}/screenshot", json={"url": url, "width": 320, "height": 200},
                          headers=bearer(MASTER), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert pixel(base64.b64decode(body["screenshot"]), 160, 100) == (0, 0xC8, 0x53)
    assert page.report, page.paths
    blocked = body["blockedRequests"]
    for t in targets:
        host = urlsplit(t).netloc.rsplit(":", 1)[0].strip("[]")
        mine = [b for b in blocked if b.startswith(f"{host}:{port}: ")]
        assert mine and all("aegisd's own address" in b for b in mine), (t, blocked)


def _interface_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This machine's own addresses (those the name of the host resolves to, and the source address of a
    route outwards), whichever it has."""
    out = []
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM):
            out.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source address
            out.append(ipaddress.ip_address(s.getsockname()[0]))
    except OSError:
        pass
    return [a for a in dict.fromkeys(out) if is_local_address(a)]


async def test_the_daemon_is_refused_as_the_url_itself(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    # the guard runs before any browser starts: /bin/true stands in for one
    d = await daemon_factory(env=agent_env(tmp_path, AEGIS_BROWSER=shutil.which("true") or "/bin/true"),
                             screenshotLoopbackPorts=[1])
    s = await d.create(workdir)
    port = _port(d)
    for url in (f"http://127.0.0.1:{port}/dashboard/", f"http://localhost:{port}/v1/health",
                f"http://[::ffff:127.0.0.1]:{port}/", f"http://0.0.0.0:{port}/"):
        r = await d.http.post(f"/v1/sessions/{s['id']}/screenshot", json={"url": url})
        assert r.status_code == 400 and "aegisd's own address" in r.json()["error"], (url, r.text)


async def test_untrusted_callers_get_no_loopback_even_configured(daemon_factory: Any, workdir: Path,
                                                                 tmp_path: Path) -> None:
    d = await daemon_factory(authToken=MASTER, screenshotLoopbackPorts=[8123],
                             env=agent_env(tmp_path, AEGIS_BROWSER=shutil.which("true") or "/bin/true"))
    k = await make_key(d, "operator", "op")
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(k["key"]))
    sid = r.json()["id"]
    for url in ("http://127.0.0.1:8123/", "http://localhost:8123/"):
        r = await d.http.post(f"/v1/sessions/{sid}/screenshot", json={"url": url}, headers=bearer(k["key"]))
        assert r.status_code == 400 and "only admins and local callers" in r.json()["error"], r.text


async def test_reach_rules() -> None:
    """The rule on its own: the daemon's port at any address of this machine, whoever asks; loopback by port
    for trusted callers only; the URL's own loopback port opened for them."""
    daemon = ("http://127.0.0.1:9100", "http://0.0.0.0:9100", "https://aegis.example.com")
    ip = ipaddress.ip_address
    trusted = await Reach.build("http://127.0.0.1:5173/", trusted=True, daemon_urls=daemon, loopback_ports=[8000])
    assert trusted.loopback_ports == {5173, 8000}
    for addr in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::",
                 *(str(a) for a in _interface_addresses())):
        assert "aegisd's own" in (trusted.refusal(ip(addr), 9100) or ""), addr
    assert trusted.refusal(ip("127.0.0.1"), 5173) is None and trusted.refusal(ip("::1"), 8000) is None
    assert "loopback port 5174" in (trusted.refusal(ip("127.0.0.1"), 5174) or "")
    # an advertised name's addresses are refused at its port even when not local (a reverse proxy)
    assert "aegisd's own" in (trusted.refusal(ip("93.184.216.34"), 443, frozenset({("93.184.216.34", 443)})) or "")
    assert trusted.refusal(ip("93.184.216.34"), 9100) is None  # another machine's 9100 is not the daemon
    # a public URL does not open loopback; an untrusted caller gets none, configured or not
    public = await Reach.build("http://93.184.216.34/", trusted=True, daemon_urls=daemon, loopback_ports=[8000])
    assert public.loopback_ports == {8000}
    untrusted = await Reach.build("http://127.0.0.1:5173/", trusted=False, daemon_urls=daemon,
                                  loopback_ports=[8000])
    assert not untrusted.loopback_ports
    assert "only admins" in (untrusted.refusal(ip("127.0.0.1"), 5173) or "")
    for addr in ("127.0.0.1", "0.0.0.0", *(str(a) for a in _interface_addresses())):
        assert "aegisd's own" in (untrusted.refusal(ip(addr), 9100) or ""), addr


async def test_the_proxy_speaks_tcp_to_http_urls_only(nursery: trio.Nursery) -> None:
    """The control socket is a Unix socket: the proxy never opens anything but TCP, and refuses every
    non-http scheme a browser might hand it."""
    from aegisd.browser.egress import GuardedProxy
    from aegisd.browser.screenshot import Guard

    proxy = GuardedProxy(Guard(Reach(loopback_ports=frozenset({1}), trusted=True)).addresses)
    port = await nursery.start(proxy.serve)
    for target in ("file:///tmp/aegisd.sock", "unix:/tmp/aegisd.sock", "ftp://example.com/",
                   "http+unix://%2Ftmp%2Faegisd.sock/v1/sessions"):
        with trio.fail_after(10):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            async with s:
                await s.send_all(f"POST {target} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
                reply = b""
                async for chunk in s:
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 403"), (target, reply)
    assert len(proxy.blocked) == 4 and all("only absolute http URLs" in b for b in proxy.blocked), proxy.blocked
