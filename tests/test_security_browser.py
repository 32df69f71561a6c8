"""Issue 10, item 1: a web page cannot drive or read the API cross-site, in every auth mode.

Over real HTTP (httpx) and real WebSockets against the real daemon: non-JSON bodies (what a page sends without a
CORS preflight) are 415, a foreign Host (DNS rebinding) 421, a foreign or null Origin 403, on every route, the
event streams and the terminal WebSocket included; the daemon's own origin and configured ones are served.
Then a real Chromium on a page from another origin tries every trick a page has (no-cors fetch, forms,
sendBeacon, WebSocket, a cors read, DNS rebinding) against a session waiting for approval, and the API shows
nothing happened."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, wrap_client_stream

from .conftest import DaemonHandle

MASTER = "b" * 40
EVIL = "http://evil.example"
APP = "http://app.example:3000"
ATTACK = {"permissionMode": "bypassPermissions", "prompt": "say:pwned", "name": "attacker", "reuse": False}


class Mode:
    """A daemon in one auth mode, and the headers its legitimate clients send."""

    def __init__(self, d: DaemonHandle, auth: dict[str, str]) -> None:
        self.d = d
        self.auth = auth
        self.url = d.daemon.http_url
        self.hostport = urlsplit(self.url).netloc

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.auth, **kw.pop("headers", {})}
        return await self.d.http.request(method, path, headers=headers, **kw)

    async def waiting(self, workdir: Path) -> str:
        """A session in permission_prompt."""
        r = await self.request("POST", "/v1/sessions", json={"workDir": str(workdir), "reuse": False,
                                                              "prompt": "tool:execute:Run:make all"})
        assert r.status_code == 201, r.text
        await self.d.wait_status(r.json()["id"], "permission_prompt")
        return str(r.json()["id"])

    def names(self) -> set[str]:
        return {r.name for r in self.d.manager.records.values()}


async def _mode(daemon_factory: Any, kind: str, **config: Any) -> Mode:
    if kind == "master":
        return Mode(await daemon_factory(authToken=MASTER, **config), {"Authorization": f"Bearer {MASTER}"})
    d = await daemon_factory(**config)
    if kind == "keys":  # a key made while zero-config; from then on every request needs one
        r = await d.http.post("/v1/auth/keys", json={"name": "ci", "role": "admin"})
        assert r.status_code == 201, r.text
        return Mode(d, {"Authorization": f"Bearer {r.json()['key']}"})
    return Mode(d, {})


MODES = ["zero-config", "master", "keys"]


@pytest.fixture(params=MODES)
async def mode(request: Any, daemon_factory: Any) -> Mode:
    return await _mode(daemon_factory, request.param)


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == code and body["message"] and body["requestId"], body
    assert "access-control-allow-origin" not in r.headers


# ---- Content-Type ------------------------------------------------------------------------------------------
async def test_bodies_must_be_json(mode: Mode, workdir: Path) -> None:
    sid = await mode.waiting(workdir)
    attack = json.dumps({"workDir": str(workdir), **ATTACK})
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        r = await mode.request("POST", "/v1/sessions", content=attack, headers=headers)
        refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert "Content-Type: application/json" in r.json()["message"]
        r = await mode.request("POST", f"/v1/sessions/{sid}/approve", content="{}", headers=headers)
        refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
        r = await mode.request("POST", "/v1/rpc", headers=headers, content=json.dumps(
            {"id": 1, "op": "session.create", "params": {"workDir": str(workdir), **ATTACK}}))
        refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    async def chunked() -> Any:  # a body without Content-Length (Transfer-Encoding: chunked)
        yield attack.encode()
    r = await mode.request("POST", "/v1/sessions", content=chunked(), headers={"Content-Type": "text/plain"})
    refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "attacker" not in mode.names()
    assert mode.d.manager.records[sid].status.value == "permission_prompt"
    # JSON with parameters, in any case, is served; an empty POST (curl -XPOST …/approve) too
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        r = await mode.request("POST", "/v1/sessions", content=json.dumps(
            {"workDir": str(workdir), "name": ctype, "reuse": False}), headers={"Content-Type": ctype})
        assert r.status_code == 201, r.text
    r = await mode.request("POST", f"/v1/sessions/{sid}/approve")
    assert r.status_code == 200, r.text
    await mode.d.wait_status(sid, "idle")


async def test_device_flow_also_takes_forms(mode: Mode) -> None:
    """RFC 8628 clients post forms to the device-flow proxy: they pass the media-type check (then 404: no OIDC
    here); other types do not, and a foreign origin is refused even there."""
    for path, form in (("/v1/auth/device/authorize", {"client_id": "c"}),
                       ("/v1/auth/device/token", {"client_id": "c", "grant_type": "refresh_token",
                                                  "refresh_token": "x"})):
        r = await mode.request("POST", path, data=form)
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", r.text
        refused(await mode.request("POST", path, content="client_id=c", headers={"Content-Type": "text/plain"}),
                415, "UNSUPPORTED_MEDIA_TYPE")
        refused(await mode.request("POST", path, data=form, headers={"Origin": EVIL}), 403, "ORIGIN_NOT_ALLOWED")


# ---- Host ---------------------------------------------------------------------------------------------------
async def test_foreign_host_is_misdirected(mode: Mode, workdir: Path) -> None:
    sid = await mode.waiting(workdir)
    port = urlsplit(mode.url).port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}", f"localhost.evil.example:{port}"):
        r = await mode.request("GET", "/v1/sessions", headers={"Host": host})
        refused(r, 421, "HOST_NOT_ALLOWED")
        assert "allowedHosts" in r.json()["message"] and sid not in r.text
        r = await mode.request("POST", "/v1/sessions", json={"workDir": str(workdir), **ATTACK}, headers={"Host": host})
        refused(r, 421, "HOST_NOT_ALLOWED")
        refused(await mode.request("GET", "/v1/events", headers={"Host": host}), 421, "HOST_NOT_ALLOWED")
        refused(await mode.request("GET", "/dashboard/", headers={"Host": host}), 421, "HOST_NOT_ALLOWED")
    assert "attacker" not in mode.names()
    # local names and any IP literal are served (rebinding needs a DNS name)
    for host in (f"localhost:{port}", "LOCALHOST", f"dash.localhost:{port}", f"127.0.0.1:{port}",
                 f"[::1]:{port}", "10.1.2.3:80", "localhost."):
        r = await mode.request("GET", "/v1/sessions", headers={"Host": host})
        assert r.status_code == 200 and sid in r.text, (host, r.status_code, r.text)


async def test_allowed_hosts(daemon_factory: Any) -> None:
    m = await _mode(daemon_factory, "zero-config", allowedHosts=["aegis.example", "*.corp.example"])
    for host in ("aegis.example:9100", "corp.example", "dev.corp.example:1"):
        assert (await m.request("GET", "/v1/sessions", headers={"Host": host})).status_code == 200, host
    for host in ("www.aegis.example", "evilcorp.example", "corp.example.evil"):
        refused(await m.request("GET", "/v1/sessions", headers={"Host": host}), 421, "HOST_NOT_ALLOWED")


async def test_bind_host_name_is_served(daemon_factory: Any) -> None:
    m = await _mode(daemon_factory, "zero-config", host="localhost")
    assert (await m.request("GET", "/v1/health", headers={"Host": "localhost"})).status_code == 200
    refused(await m.request("GET", "/v1/health", headers={"Host": "evil.example"}), 421, "HOST_NOT_ALLOWED")


# ---- Origin -------------------------------------------------------------------------------------------------
async def test_foreign_origins_are_forbidden(mode: Mode, workdir: Path) -> None:
    sid = await mode.waiting(workdir)
    for origin in (EVIL, "null", f"http://localhost:{urlsplit(mode.url).port}", mode.url.replace("http:", "https:"),
                   f"{mode.url}.evil.example"):
        h = {"Origin": origin}
        for method, path in (("GET", "/v1/sessions"), ("GET", f"/v1/sessions/{sid}"), ("GET", "/v1/health"),
                             ("GET", "/dashboard/"), ("POST", f"/v1/sessions/{sid}/approve"),
                             ("OPTIONS", "/v1/sessions")):
            r = await mode.request(method, path, headers=h)
            refused(r, 403, "ORIGIN_NOT_ALLOWED")
            assert sid not in r.text
        r = await mode.request("POST", "/v1/sessions", json={"workDir": str(workdir), **ATTACK}, headers=h)
        refused(r, 403, "ORIGIN_NOT_ALLOWED")
        r = await mode.request("POST", "/v1/rpc", json={"id": 1, "op": "session.list", "params": {}}, headers=h)
        refused(r, 403, "ORIGIN_NOT_ALLOWED")
        # the event streams answer with the refusal, not a stream
        for path in ("/v1/events", f"/v1/sessions/{sid}/events"):
            async with mode.d.http.stream("GET", path, headers={**mode.auth, **h}) as r:
                assert r.status_code == 403 and r.headers["content-type"] == "application/json"
                assert json.loads(await r.aread())["code"] == "ORIGIN_NOT_ALLOWED"
    assert "null" in (await mode.request("GET", "/v1/sessions", headers={"Origin": "null"})).json()["message"]
    assert "attacker" not in mode.names()
    assert mode.d.manager.records[sid].status.value == "permission_prompt"
    # the daemon's own origin (the dashboard), with no CORS headers: it needs none
    for origin, host in ((mode.url, None), (f"http://localhost:{urlsplit(mode.url).port}",
                                            f"localhost:{urlsplit(mode.url).port}")):
        h = {"Origin": origin, **({"Host": host} if host else {})}
        r = await mode.request("GET", "/v1/sessions", headers=h)
        assert r.status_code == 200 and sid in r.text and "access-control-allow-origin" not in r.headers
        r = await mode.request("POST", "/v1/sessions", json={"workDir": str(workdir), "name": f"own {origin}",
                                                             "reuse": False}, headers=h)
        assert r.status_code == 201 and "access-control-allow-origin" not in r.headers


async def test_configured_origin_gets_cors(daemon_factory: Any, workdir: Path) -> None:
    for kind in MODES:
        m = await _mode(daemon_factory, kind, allowedOrigins=[APP, "https://ops.example"])
        pre = await m.d.http.options("/v1/sessions", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204, pre.text
        assert pre.headers["access-control-allow-origin"] == APP and pre.headers["vary"] == "Origin"
        assert {"POST", "GET", "DELETE"} <= {x.strip() for x in pre.headers["access-control-allow-methods"].split(",")}
        allowed = {x.strip().lower() for x in pre.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "last-event-id", "x-request-id"} <= allowed
        assert "access-control-allow-credentials" not in pre.headers
        r = await m.request("POST", "/v1/sessions", json={"workDir": str(workdir), "name": f"from app {kind}",
                                                          "reuse": False}, headers={"Origin": APP})
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == APP, r.text
        assert "access-control-allow-credentials" not in r.headers
        r = await m.request("GET", "/v1/sessions", headers={"Origin": "https://ops.example:443"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ops.example:443"
        # its refusals are readable by it too; other origins still get nothing
        r = await m.request("POST", "/v1/sessions", content="{}", headers={"Origin": APP, "Content-Type": "text/plain"})
        assert r.status_code == 415 and r.headers["access-control-allow-origin"] == APP
        refused(await m.d.http.options("/v1/sessions", headers={"Origin": EVIL, "Access-Control-Request-Method":
                                                                "POST"}), 403, "ORIGIN_NOT_ALLOWED")
        refused(await m.request("GET", "/v1/sessions", headers={"Origin": APP + "1"}), 403, "ORIGIN_NOT_ALLOWED")
        r = await m.request("GET", "/v1/sessions")
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert f"from app {kind}" in m.names()
        await m.d.http.aclose()
        m.d.shutdown.set()
        with trio.fail_after(15):
            await m.d.done.wait()  # type: ignore[attr-defined]


def test_bad_browser_config_is_a_clear_error(tmp_path: Path) -> None:
    from aegisd.core.config import load_config
    from aegisd.core.errors import ValidationError

    for env, word in (({"AEGIS_ALLOWED_ORIGINS": "https://app.example/path"}, "allowedOrigins"),
                      ({"AEGIS_ALLOWED_ORIGINS": "*"}, "allowedOrigins"),
                      ({"AEGIS_ALLOWED_HOSTS": "https://app.example"}, "allowedHosts")):
        with pytest.raises(ValidationError, match=word):
            load_config(env=env, cwd=tmp_path)
    cfg = load_config(env={"AEGIS_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080",
                           "AEGIS_ALLOWED_HOSTS": "a.example,.b.example"}, cwd=tmp_path)
    assert cfg.allowedOrigins == ("https://a.example", "http://b.example:8080")
    assert cfg.allowedHosts == ("a.example", ".b.example")


# ---- the terminal WebSocket ---------------------------------------------------------------------------------
async def _ws_status(m: Mode, sid: str, headers: dict[str, str], host: str | None = None) -> int:
    """The handshake's answer: 101 when accepted (the socket is then closed unused), else the HTTP status."""
    extra = [(k.encode(), v.encode()) for k, v in {**m.auth, **headers}.items()]
    resource = f"/v1/sessions/{sid[:8]}/terminal"
    u = urlsplit(m.url)
    status = 101
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                stream = await trio.open_tcp_stream(u.hostname or "127.0.0.1", u.port or 80)
                try:
                    ws = await wrap_client_stream(nursery, stream, host or u.netloc, resource, extra_headers=extra)
                    await ws.aclose()
                finally:
                    await stream.aclose()  # trio-websocket leaves it open after a rejection
    except* ConnectionRejected as group:
        exc = group.exceptions[0]
        assert isinstance(exc, ConnectionRejected)
        assert json.loads(exc.body or b"{}")["code"] in ("ORIGIN_NOT_ALLOWED", "HOST_NOT_ALLOWED")
        status = exc.status_code
    return status


async def test_terminal_websocket_checks_origin_and_host(mode: Mode, workdir: Path) -> None:
    sid = await mode.waiting(workdir)
    port = urlsplit(mode.url).port
    ws = _ws_status
    assert await ws(mode, sid, {"Origin": EVIL}) == 403
    assert await ws(mode, sid, {"Origin": "null"}) == 403
    assert await ws(mode, sid, {}, host=f"evil.example:{port}") == 421
    assert await ws(mode, sid, {"Origin": f"http://evil.example:{port}"}, host=f"evil.example:{port}") == 421
    assert mode.d.manager.records[sid].status.value == "permission_prompt"
    # its own origin, and clients that send none, are served
    assert await ws(mode, sid, {"Origin": mode.url}) == 101
    assert await ws(mode, sid, {}) == 101
    assert await ws(mode, sid, {"Origin": f"http://localhost:{port}"}, host=f"localhost:{port}") == 101


# ---- a real browser -----------------------------------------------------------------------------------------
CHROMIUM = os.environ.get("AEGIS_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 10_000


def _need_chromium() -> None:
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (make install)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not found (apt-get install chromium, or set AEGIS_TEST_CHROMIUM)")


ATTACK_PAGE = """<!doctype html><html><body><h1>Cute cats</h1><script>
const D = %(daemon)s, SID = %(sid)s, WORKDIR = %(workdir)s;
const payload = JSON.stringify({workDir: WORKDIR, permissionMode: "bypassPermissions", prompt: "say:pwned",
                                name: "attacker", reuse: false});
async function settle(p) { try { return await p; } catch (e) { return "error: " + e; } }
// simple requests: the browser sends them without asking, the page just cannot read the answer
window.noCors = (kind) => settle(fetch(D + (kind === "approve" ? "/v1/sessions/" + SID + "/approve" : "/v1/sessions"),
  {method: "POST", mode: "no-cors", ...{
    plain: {headers: {"Content-Type": "text/plain"}, body: payload},
    blob: {body: new Blob([payload])},  // no Content-Type at all
    approve: {},  // an empty POST
  }[kind]}).then((r) => r.type));
window.beacon = (body) => navigator.sendBeacon(D + "/v1/sessions/" + SID + "/approve", body);
// the terminal WebSocket: not covered by CORS at all
window.socket = () => new Promise((resolve) => {
  const seen = [];
  const ws = new WebSocket(D.replace("http", "ws") + "/v1/sessions/" + SID.slice(0, 8) + "/terminal");
  ws.onopen = () => { seen.push("open"); ws.send(JSON.stringify({type: "approve"})); };
  ws.onmessage = (m) => {
    seen.push(m.data);
    if (JSON.parse(m.data).status === "running") { ws.close(); resolve(seen); }  // approved: the turn goes on
  };
  ws.onerror = () => seen.push("error");
  ws.onclose = (e) => { seen.push("close " + e.code); resolve(seen); };
});
// a read: the list of sessions (their work dirs, prompts)
window.read = () => settle(fetch(D + "/v1/sessions").then((r) => r.text()));
</script></body></html>"""

FORM_PAGE = """<!doctype html><html><body onload="document.forms[0].submit()">
<form method="POST" action="%(action)s" %(enctype)s>%(fields)s</form></body></html>"""


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = self.pages.get(self.path.split("?")[0])
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


def _serve_pages(pages: dict[str, str]) -> Iterator[int]:
    """The attacker's site: a small HTTP server on another port (a thread: http.server blocks)."""
    handler = type("Pages", (_Pages,), {"pages": {k: v.encode() for k, v in pages.items()}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _chromium(resolver_rules: str, scenario: Any) -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[f"--host-resolver-rules={resolver_rules}"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            return scenario(page)
        finally:
            browser.close()


async def test_a_page_from_another_site_cannot_drive_or_read(daemon: DaemonHandle, workdir: Path) -> None:
    """Zero-config, the worst case: loopback clients are admins and nothing asks for a token."""
    _need_chromium()
    base = daemon.daemon.http_url
    waiting = await daemon.create(workdir, name="needs-approval", prompt="tool:execute:Run:make all", reuse=False)
    sid = waiting["id"]
    await daemon.wait_status(sid, "permission_prompt")
    form = {"action": f"{base}/v1/sessions/{sid}/approve"}
    pages = {
        "/": ATTACK_PAGE % {"daemon": json.dumps(base), "sid": json.dumps(sid), "workdir": json.dumps(str(workdir))},
        # an empty form (only the Origin rule stops it), and forms with bodies
        "/form-empty": FORM_PAGE % {**form, "enctype": "", "fields": ""},
        "/form-fields": FORM_PAGE % {**form, "enctype": "", "fields": '<input name="x" value="1">'},
        "/form-plain": FORM_PAGE % {**form, "enctype": 'enctype="text/plain"',
                                    "fields": '<input name=\'{"a":"\' value=\'"}\'>'},
    }

    def scenario(page: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"daemon answered": []}

        def answered(method: str, url: str, action: Any) -> Any:
            """Run action; wait for the daemon's answer to it (so the daemon, not the browser, refused it)."""
            with page.expect_response(lambda r: r.request.method == method and r.url == url) as response:
                result = action()
            out["daemon answered"].append(response.value.status)
            return result

        with contextlib.ExitStack() as stack:
            port = stack.enter_context(contextlib.contextmanager(_serve_pages)(pages))
            site = f"http://attacker.test:{port}"
            for name in ("/form-empty", "/form-fields", "/form-plain"):  # each navigates to the daemon's answer
                answered("POST", form["action"], lambda name=name: page.goto(site + name))
                page.wait_for_url(form["action"])
                out[name] = page.content()
            page.goto(site + "/")
            for kind in ("plain", "blob", "approve"):
                url = form["action"] if kind == "approve" else base + "/v1/sessions"
                out[kind] = answered("POST", url, lambda kind=kind: page.evaluate("(k) => noCors(k)", kind))
            for body in ("undefined", "'{}'"):
                out.setdefault("beacon", []).append(answered("POST", form["action"],
                                                             lambda b=body: page.evaluate(f"beacon({b})")))
            out["socket"] = page.evaluate("socket()")
            # a cors read of a refusal that carries no CORS headers: the browser blocks it (requestfailed)
            with page.expect_event("requestfailed", lambda r: r.url == base + "/v1/sessions") as failed:
                out["read"] = page.evaluate("read()")
            out["read failure"] = failed.value.failure
            return out

    with trio.fail_after(90):
        out = await trio.to_thread.run_sync(_chromium, "MAP attacker.test 127.0.0.1", scenario)
    # the browser sent everything, and the daemon refused it (the Origin rule comes first)
    assert out["beacon"] == [True, True] and [out[k] for k in ("plain", "blob", "approve")] == ["opaque"] * 3, out
    assert out["daemon answered"] == [403] * 8, out
    assert all("ORIGIN_NOT_ALLOWED" in out[f] for f in ("/form-empty", "/form-fields", "/form-plain"))
    # nothing happened: no session, the prompt still waits, the socket never opened, nothing was read
    assert {r.name for r in daemon.manager.records.values()} == {"needs-approval"}
    assert daemon.manager.records[sid].status.value == "permission_prompt"
    assert "open" not in out["socket"] and out["socket"][-1].startswith("close"), out["socket"]
    assert out["read"].startswith("error:") and sid not in json.dumps(out["read"])
    r = await daemon.http.get(f"/v1/sessions/{sid}/transcript")
    assert "permission: allow" not in r.text
    assert (await daemon.http.post(f"/v1/sessions/{sid}/approve")).status_code == 200  # the user still can
    await daemon.wait_status(sid, "idle")


async def test_dns_rebinding_reads_and_does_nothing(daemon: DaemonHandle, workdir: Path) -> None:
    """A page whose own name re-resolves to 127.0.0.1 is same-origin with the daemon: no CORS, no preflight, it
    could read every answer and send JSON. The Host check is what stops it."""
    _need_chromium()
    waiting = await daemon.create(workdir, name="secret-work", prompt="tool:execute:Run:make all", reuse=False)
    await daemon.wait_status(waiting["id"], "permission_prompt")
    port = urlsplit(daemon.daemon.http_url).port
    site = f"http://rebind.test:{port}"
    create = json.dumps({"workDir": str(workdir), **ATTACK})

    def scenario(page: Any) -> dict[str, Any]:
        # The attacker served its page from its own address, then pointed the name at 127.0.0.1. Here the page
        # comes from the daemon's port at once (Chromium's own private-network checks, which not every browser
        # has, would otherwise add a preflight): the origin, and what the daemon sees, are the same.
        page.goto(site + "/")
        return page.evaluate("""async ([create, sid]) => {
            const list = await fetch("/v1/sessions");
            const made = await fetch("/v1/sessions", {method: "POST", body: create,
                                                      headers: {"Content-Type": "application/json"}});
            const approve = await fetch("/v1/sessions/" + sid + "/approve", {method: "POST"});
            return {list: [list.status, await list.text()], made: [made.status, await made.text()],
                    approve: [approve.status, await approve.text()]};
        }""", [create, waiting["id"]])

    with trio.fail_after(90):
        out = await trio.to_thread.run_sync(_chromium, "MAP rebind.test 127.0.0.1", scenario)
    for what in ("list", "made", "approve"):
        status, text = out[what]
        assert status == 421 and json.loads(text)["code"] == "HOST_NOT_ALLOWED", out
    assert "secret-work" not in json.dumps(out) and waiting["id"] not in out["list"][1]
    assert {r.name for r in daemon.manager.records.values()} == {"secret-work"}
    assert daemon.manager.records[waiting["id"]].status.value == "permission_prompt"
