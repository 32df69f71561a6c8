"""The web dashboard in a real browser: Debian's chromium driven by Playwright (sync API, in one worker thread:
its async API does not run under trio) against a live daemon with the fake agent. Skipped with the reason when
Playwright or chromium is missing (`make test` installs both where it can)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ..conftest import DaemonHandle

pytest.importorskip("playwright.sync_api", reason="playwright not installed (make install)")
CHROMIUM = os.environ.get("AEGIS_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("chromium not found (apt-get install chromium, or set AEGIS_TEST_CHROMIUM)", allow_module_level=True)

MASTER = "d" * 40
TIMEOUT_MS = 10_000


def _browse(scenario: Any) -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            result = scenario(page)
            # no script error and no CSP violation ("Refused to ..."); failed requests are the API's answers,
            # which the page shows itself
            assert not [e for e in errors if not e.startswith("Failed to load resource")], errors
            return result
        finally:
            browser.close()


async def test_dashboard_drives_sessions(daemon: DaemonHandle, workdir: Path) -> None:
    base = daemon.daemon.http_url
    waiting = await daemon.create(workdir, name="needs-approval", prompt="tool:execute:Run:make all", reuse=False)
    await daemon.wait_status(waiting["id"], "permission_prompt")
    (workdir / "Makefile").write_text("build:\n\t@echo built\ntest:\n\t@echo 'E  assert 6 == 7'; exit 1\n")

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/")
        expect(page.locator("#live")).to_have_text("live")  # the SSE stream is open
        row = page.locator(f"tr[data-id='{waiting['id']}']")
        expect(row.locator(".badge")).to_have_text("permission_prompt")
        # a session created elsewhere appears without a reload (SSE)
        with httpx.Client(base_url=base) as api:
            other = api.post("/v1/sessions", json={"workDir": str(workdir), "name": "made-by-api", "reuse": False})
            assert other.status_code == 201
        expect(page.locator("#session-rows")).to_contain_text("made-by-api")
        # search filters the table
        page.keyboard.press("Control+k")
        page.keyboard.type("needs-")
        expect(page.locator("#session-rows tr")).to_have_count(1)
        page.keyboard.press("Escape")
        # open the waiting session, approve; the status follows through SSE
        row.click()
        expect(page.locator("#s-permission-tool")).to_have_text("Run")
        expect(page.locator("#s-permission-input")).to_contain_text("make all")
        page.click("#approve")
        expect(page.locator("#s-status")).to_have_text("idle")
        expect(page.locator("#transcript")).to_contain_text("permission: allow")
        # send a prompt from the page
        page.fill("#send-text", "say:hello from the browser")
        page.click("#send-form button[type=submit]")
        expect(page.locator("#transcript")).to_contain_text("hello from the browser")
        # run the project's checks from the page: the failing step and its output are shown
        page.click("#verify")
        expect(page.locator("#s-verify-summary")).to_have_text("Checks failed: 1 of 2 step(s) failed: test")
        expect(page.locator("#s-verify-steps li.bad")).to_contain_text("test — exited with 2 (make test")
        expect(page.locator("#s-verify-output")).to_contain_text("E  assert 6 == 7")
        expect(page.locator("#verify")).to_have_text("Verify")
        # a new session from the keyboard shortcut and the form
        page.keyboard.press("Control+n")
        page.fill("#new-workdir", str(workdir))
        page.fill("#new-name", "made-in-browser")
        page.fill("#new-prompt", "say:created by the dashboard")
        page.click("#new-submit")
        expect(page.locator("#s-name")).to_have_text("made-in-browser")
        expect(page.locator("#transcript")).to_contain_text("created by the dashboard")
        # a bad work dir: the daemon's message, the dialog stays open
        page.keyboard.press("Control+n")
        page.fill("#new-workdir", "/etc")
        page.click("#new-submit")
        expect(page.locator("#new-error")).to_contain_text("allowed")
        page.keyboard.press("Escape")
        expect(page.locator("#new-dialog")).not_to_be_visible()
        # shortcuts: help, g o (overview), g a (audit)
        page.keyboard.press("?")
        expect(page.locator("#help-dialog")).to_be_visible()
        page.keyboard.press("Escape")
        page.keyboard.press("g")
        page.keyboard.press("o")
        expect(page.locator("#view-overview")).to_be_visible()
        expect(page.locator("#cards")).to_contain_text("active")
        page.keyboard.press("g")
        page.keyboard.press("a")
        expect(page.locator("#audit-rows")).to_contain_text("permission.approve")

    with trio.fail_after(90):
        await trio.to_thread.run_sync(_browse, scenario)
    names = {r.name: r for r in daemon.daemon.manager.records.values()}
    assert names["needs-approval"].turns == 2 and "made-in-browser" in names


async def test_dashboard_through_localhost(daemon: DaemonHandle, workdir: Path) -> None:
    """The dashboard at http://localhost:PORT/ (another origin than 127.0.0.1:PORT) loads, streams and approves:
    the browser defences serve the daemon's own origin under either name."""
    port = daemon.daemon.http_url.rsplit(":", 1)[1]
    base = f"http://localhost:{port}"
    waiting = await daemon.create(workdir, name="approve-me", prompt="tool:execute:Run:make all", reuse=False)
    await daemon.wait_status(waiting["id"], "permission_prompt")

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        posts: list[tuple[str | None, int]] = []
        page.on("response", lambda r: posts.append((r.request.header_value("origin"), r.status))
                if r.request.method == "POST" else None)
        page.goto(base + "/dashboard/")
        expect(page.locator("#live")).to_have_text("live")
        page.locator(f"tr[data-id='{waiting['id']}']").click()
        expect(page.locator("#s-permission-tool")).to_have_text("Run")
        page.click("#approve")
        expect(page.locator("#s-status")).to_have_text("idle")
        assert (base, 200) in posts, posts  # the approval carried the page's own origin, and was served

    with trio.fail_after(90):
        await trio.to_thread.run_sync(_browse, scenario)
    assert daemon.daemon.manager.records[waiting["id"]].turns == 1


async def test_dashboard_sign_in_with_a_token(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "name": "behind-auth"},
                          headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 201
    base = d.daemon.http_url

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/")
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "wrong-token")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_contain_text("not valid")
        page.fill("#token", MASTER)
        page.click("#login-form button")
        expect(page.locator("#session-rows")).to_contain_text("behind-auth")
        expect(page.locator("#live")).to_have_text("live")  # SSE through a single-use token
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER}"}) as api:
            assert api.post("/v1/sessions", json={"workDir": str(workdir), "name": "second",
                                                  "reuse": False}).status_code == 201
        expect(page.locator("#session-rows")).to_contain_text("second")

    with trio.fail_after(90):
        await trio.to_thread.run_sync(_browse, scenario)


async def test_dashboard_headers_and_switch(daemon_factory: Any) -> None:
    d = await daemon_factory()
    r = await d.http.get("/dashboard/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert (await d.http.get("/dashboard/app.js")).headers["content-type"].startswith("text/javascript")
    assert (await d.http.get("/dashboard")).status_code in (301, 302)
    r = await d.http.get("/dashboard/nope.js")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    off = await daemon_factory(dashboardEnabled=False, stateDir=str(Path(d.daemon.config.stateDir).parent / "s2"),
                               socket=str(d.daemon.config.socket_path.parent / "off.sock"))
    assert (await off.http.get("/dashboard/")).status_code == 404


async def test_dashboard_single_sign_on(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    pytest.importorskip("jwt", reason="PyJWT not installed (pip install 'aegis-py[oidc]')")
    from ..fake_idp import CLIENT_ID, FakeIdp

    idp = FakeIdp()
    issuer = await nursery.start(idp.serve)
    d = await daemon_factory(oidc={"issuer": issuer, "clientId": CLIENT_ID})
    with trio.fail_after(10):
        await d.daemon.oidc.ready.wait()
    base = d.daemon.http_url
    ada = idp.mint()

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/")
        expect(page.locator("#login")).to_be_visible()
        page.click("#sso-link")  # to the IdP, which consents at once, and back through /auth/callback
        expect(page.locator("#whoami-name")).to_have_text("ada@example.com (operator)")
        assert page.url == base + "/dashboard/"
        expect(page.locator("#live")).to_have_text("live")  # the event stream rides on the session cookie
        with httpx.Client(base_url=base) as api:
            r = api.post("/v1/sessions", json={"workDir": str(workdir), "name": "ada-made"},
                         headers={"Authorization": f"Bearer {ada}"})
            assert r.status_code == 201, r.text
        expect(page.locator("#session-rows")).to_contain_text("ada-made")
        page.click("#sign-out")
        expect(page.locator("#login")).to_be_visible()

    with trio.fail_after(90):
        await trio.to_thread.run_sync(_browse, scenario)


async def test_dashboard_approves_the_request_it_shows(daemon: DaemonHandle, workdir: Path) -> None:
    """Two requests pending; the page shows the first; it is decided elsewhere before the page hears of it.
    Approve on the page names the request shown: the daemon decides nothing, and the second request, which the
    page never showed, still waits until the user sees it and approves it."""
    import re

    from ..test_security_approve import pending, two_pending

    sid, first, second = await two_pending(daemon, workdir)
    base = daemon.daemon.http_url

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.route(re.compile(r"/v1/events"), lambda route: route.abort())  # no live refresh: a stale tab
        page.goto(base + f"/dashboard/#/sessions/{sid}")
        expect(page.locator("#s-permission-id")).to_have_text(first)
        with httpx.Client(base_url=base) as api:
            assert api.post(f"/v1/sessions/{sid}/reject", json={"requestId": first}).status_code == 200
        with page.expect_request(lambda r: r.url.endswith("/approve")) as req:
            page.click("#approve")
        assert req.value.post_data_json == {"requestId": first}
        expect(page.locator("#toast")).to_contain_text(f"the pending one is {second}")
        expect(page.locator("#s-permission-id")).to_have_text(second)  # the page shows what is true now
        assert pending(daemon, sid) == second
        with page.expect_request(lambda r: r.url.endswith("/reject")) as req:
            page.click("#reject")
        assert req.value.post_data_json == {"requestId": second}
        expect(page.locator("#s-permission")).to_be_hidden()

    with trio.fail_after(90):
        await trio.to_thread.run_sync(_browse, scenario)
    audit = (await daemon.http.get("/v1/audit?action=permission.*")).json()["records"]
    assert [(a["action"], a["detail"]["requestId"]) for a in audit] == [("permission.reject", first),
                                                                        ("permission.reject", second)]
