"""The web dashboard in a real browser: Debian's chromium driven by Playwright (sync API, in one worker thread:
its async API does not run under trio) against a live daemon with the fake agent. Skipped with the reason when
Playwright or chromium is missing (`make test` installs both where it can)."""

from __future__ import annotations

import os
import shutil
from functools import partial
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


def watch(page: Any) -> list[str]:
    """Script errors and CSP violations ("Refused to ...") of a page; failed requests are the API's answers,
    which the page shows itself."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return errors


def page_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if not e.startswith("Failed to load resource")]


def _browse(scenario: Any, viewport: dict[str, int] | None = None) -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(**({"viewport": viewport} if viewport else {}))
            page.set_default_timeout(TIMEOUT_MS)
            errors = watch(page)
            result = scenario(page)
            assert not page_errors(errors), errors  # no script error and no CSP violation
            return result
        finally:
            browser.close()


async def test_dashboard_drives_sessions(daemon: DaemonHandle, workdir: Path) -> None:
    base = daemon.daemon.http_url
    waiting = await daemon.create(workdir, name="needs-approval", prompt="tool:execute:Run:make all", reuse=False)
    await daemon.wait_status(waiting["id"], "permission_prompt")
    (workdir / "Makefile").write_text("build:\n\t@echo built\ntest:\n\t@echo 'E  assert 6 == 7'; exit 1\n")
    node_id = daemon.daemon.services.cluster.node_id  # type: ignore[union-attr]

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
        expect(page.locator("#s-node")).to_have_text(node_id)  # the node that runs it
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

        page.goto(base + "/dashboard/")
        expect(page.locator("#live")).to_have_text("live")
        page.locator(f"tr[data-id='{waiting['id']}']").click()
        expect(page.locator("#s-permission-tool")).to_have_text("Run")
        # waited for as such: the page may show `idle` (from its stream) before the browser reports the answer
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.click("#approve")
        approval = answer.value
        # the approval carried the page's own origin, and was served
        assert (approval.request.header_value("origin"), approval.status) == (base, 200), approval.url
        expect(page.locator("#s-status")).to_have_text("idle")

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


# ---- the first hour (issue 11): Overview, Users, Pipelines, and a phone's width --------------------------------
WIDTHS = [pytest.param(1400, id="1400px"), pytest.param(390, id="390px")]


def viewport(width: int) -> dict[str, int]:
    return {"width": width, "height": 900 if width > 800 else 844}


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot kept with the test's files (looked at by people; the test asserts structure)."""
    out = tmp_path / "screens" / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 1000
    return out


HIT_TEST = """(el) => {
  const r = el.getBoundingClientRect();
  const points = [[r.left + r.width / 2, r.top + r.height / 2], [r.left + 2, r.top + 2], [r.right - 2, r.top + 2],
                  [r.left + 2, r.bottom - 2], [r.right - 2, r.bottom - 2]];
  return points.map(([x, y]) => {
    const hit = document.elementFromPoint(x, y);
    if (hit === el || el.contains(hit)) return null;
    return hit ? hit.tagName + "." + hit.className : "nothing at " + x + "," + y;
  }).filter(Boolean);
}"""


def check_layout(page: Any, width: int, *, buttons: str | None = None) -> None:
    """The structure a person needs at this width: no horizontal scrolling of the page, every navigation link
    visible inside the viewport, every table row inside the page's width, and the given buttons visible, inside
    the viewport, big enough to tap at a phone's width, and not covered by anything."""
    dims = page.evaluate("() => ({sw: document.documentElement.scrollWidth, iw: window.innerWidth})")
    assert dims["iw"] == width and dims["sw"] <= width, dims
    assert page.locator("[hidden]:visible").count() == 0  # no style undoes the hidden attribute
    page.evaluate("() => window.scrollTo(0, 0)")
    vh = page.viewport_size["height"]
    links = page.locator("nav a:visible")
    assert links.count() >= 4
    for i in range(links.count()):
        box = links.nth(i).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width and 0 <= box["y"] <= vh - box["height"], box
    rows = page.locator("section.view:visible tr:visible")
    for i in range(rows.count()):
        box = rows.nth(i).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (i, box)
    if buttons:
        found = page.locator(buttons)
        assert found.count() > 0
        for i in range(found.count()):
            b = found.nth(i)
            b.scroll_into_view_if_needed()
            box = b.bounding_box()
            assert b.is_visible() and b.is_enabled()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] >= 0, box
            assert box["y"] + box["height"] <= vh, box
            if width < 800:
                assert box["height"] >= 36 and box["width"] >= 80, box  # a finger can hit it
            assert b.evaluate(HIT_TEST) == [], f"{buttons} #{i} is covered"


@pytest.mark.parametrize("width", WIDTHS)
async def test_overview_leads_with_what_needs_attention(daemon_factory: Any, workdir: Path, tmp_path: Path,
                                                       width: int) -> None:
    from ..conftest import agent_env

    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_COST_PER_TURN="0.25",
                                           FAKE_ACP_MODELS="default,sonnet,haiku"))
    base = d.daemon.http_url
    done = await d.create(workdir, name="did-work", prompt="say:done", reuse=False)
    await d.wait_event(done["id"], "turn")
    failed = await d.create(workdir, name="not-signed-in", prompt="error:-32000:Authentication required",
                            reuse=False, model="sonnet")
    await d.wait_event(failed["id"], "turn")
    crashed = await d.create(workdir, name="fell-over", prompt="crash:7", reuse=False)
    await d.wait_status(crashed["id"], "crashed")
    stalled = await d.create(workdir, name="gone-quiet", prompt="sleep:60000", stallThresholdMs=1000, reuse=False)
    await d.wait_status(stalled["id"], "stalled")
    waiting = await d.create(workdir, name="wants-make", prompt="tool:execute:Run:make all", reuse=False)
    await d.wait_status(waiting["id"], "permission_prompt")
    req = d.manager.records[waiting["id"]].pendingPermission.requestId
    crash_reason = d.manager.records[crashed["id"]].crash.reason
    auth_line = d.manager.records[failed["id"]].lastError.message
    assert "claude login" in auth_line

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/#/overview")
        expect(page.locator("#live")).to_have_text("live")
        # first what needs a person: the waiting request, with its id and the buttons that decide it
        item = page.locator(f".pending-item[data-session='{waiting['id']}']")
        expect(item).to_contain_text("wants-make")
        expect(item).to_contain_text("Run")
        expect(item).to_contain_text(req)
        expect(item.locator("pre")).to_contain_text("make all")
        # then stalled, crashed and failing sessions, each with the line that says why
        expect(page.locator(f".trouble-item[data-session='{stalled['id']}']")).to_contain_text("no agent activity")
        expect(page.locator(f".trouble-item[data-session='{crashed['id']}']")).to_contain_text(crash_reason)
        expect(page.locator(f".trouble-item[data-session='{failed['id']}']")).to_contain_text(auth_line)
        expect(page.locator(f".trouble-item[data-session='{done['id']}']")).to_have_count(0)
        expect(page.locator("#all-clear")).to_be_hidden()
        # the attention list comes before the counts and the plots
        order = page.evaluate("""() => ['#pending-list', '#trouble-list', '#cards', '#plots']
            .map((s) => document.querySelector(s).getBoundingClientRect().top)""")
        assert order == sorted(order), order
        # plots of sessions, tokens and cost over time, drawn as SVG: this hour has the turns and their cost
        expect(page.locator("#plots figure")).to_have_count(3)
        tokens = page.locator("figure[data-plot='tokens']")
        expect(tokens.locator("rect.bar")).to_have_count(24)
        assert 1 <= tokens.locator("rect.bar:not(.zero)").count() <= 2  # 2 if the turns straddle an hour
        turns = len(d.daemon.usage.records)
        assert turns >= 1
        expect(tokens.locator("figcaption")).to_contain_text(f"{15 * turns} in all")
        expect(page.locator("figure[data-plot='cost'] figcaption")).to_contain_text("$")
        assert page.locator("figure[data-plot='sessions'] rect.bar:not(.zero)").count() >= 1
        page.click("[data-range='week']")
        expect(tokens.locator("rect.bar")).to_have_count(14)
        assert 1 <= tokens.locator("rect.bar:not(.zero)").count() <= 2
        expect(tokens.locator("figcaption")).to_contain_text(f"{15 * turns} in all")
        shot(page, tmp_path, f"overview-{width}")
        check_layout(page, width, buttons=".pending-item button")
        # approve in place: the request shown, by its id; the session leaves permission_prompt
        with page.expect_request(lambda r: r.url.endswith(f"/v1/sessions/{waiting['id']}/approve")) as sent:
            item.locator("button.approve").click()
        assert sent.value.post_data_json == {"requestId": req}
        expect(item).to_have_count(0)
        expect(page.locator("#toast")).to_contain_text("Approved Run in wants-make")
        # a request made now shows up without a reload (SSE)
        with httpx.Client(base_url=base) as api:
            assert api.post("/v1/sessions", json={"workDir": str(workdir), "name": "asks-later",
                                                  "prompt": "tool:edit:Edit:notes.md", "reuse": False}
                            ).status_code == 201
        expect(page.locator(".pending-item", has_text="asks-later")).to_contain_text("Edit")
        # the session view shows what the agent reports: its model, the ones it offers, and the last error
        page.locator(f".trouble-item[data-session='{failed['id']}'] a").click()
        expect(page.locator("#s-name")).to_have_text("not-signed-in")
        expect(page.locator("#s-model")).to_have_text("sonnet")
        expect(page.locator("#s-models")).to_have_text("(offers default, sonnet, haiku)")
        expect(page.locator("#s-last-error")).to_have_text("auth: " + auth_line)
        page.goto(base + f"/dashboard/#/sessions/{crashed['id']}")
        expect(page.locator("#s-crash")).to_contain_text(crash_reason)
        shot(page, tmp_path, f"session-crashed-{width}")
        check_layout(page, width)

    with trio.fail_after(90):
        await trio.to_thread.run_sync(partial(_browse, scenario, viewport(width)))
    assert await d.wait_status(waiting["id"], "idle", "running") in ("idle", "running")
    audit = (await d.http.get("/v1/audit?action=permission.approve")).json()["records"]
    assert [a["detail"]["requestId"] for a in audit] == [req]


async def test_overview_says_when_nothing_needs_attention(daemon: DaemonHandle, tmp_path: Path) -> None:
    base = daemon.daemon.http_url

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/#/overview")
        expect(page.locator("#all-clear")).to_be_visible()
        expect(page.locator("#pending-list li, #trouble-list li")).to_have_count(0)
        expect(page.locator("figure[data-plot='tokens'] rect.bar.zero")).to_have_count(24)
        shot(page, tmp_path, "overview-empty-390")
        check_layout(page, 390)
        page.click("nav a[data-view='sessions']")
        expect(page.locator("#no-sessions")).to_be_visible()
        expect(page.locator("#no-sessions")).to_contain_text("New session")
        shot(page, tmp_path, "sessions-empty-390")
        check_layout(page, 390)

    with trio.fail_after(60):
        await trio.to_thread.run_sync(partial(_browse, scenario, viewport(390)))


@pytest.mark.parametrize("width", WIDTHS)
async def test_users_view_for_admins_only(daemon_factory: Any, nursery: trio.Nursery, workdir: Path, tmp_path: Path,
                                          width: int) -> None:
    pytest.importorskip("jwt", reason="PyJWT not installed (pip install 'aegis-py[oidc]')")
    from ..fake_idp import CLIENT_ID, FakeIdp

    idp = FakeIdp()
    idp.user = {**idp.user, "aegis_role": "admin"}  # ada signs in to the dashboard as an admin
    issuer = await nursery.start(idp.serve)
    d = await daemon_factory(authToken=MASTER, oidc={"issuer": issuer, "clientId": CLIENT_ID})
    with trio.fail_after(10):
        await d.daemon.oidc.ready.wait()
    base = d.daemon.http_url
    master = {"Authorization": f"Bearer {MASTER}"}

    async def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        r = await d.http.post(path, json=body, headers=headers)
        assert r.status_code in (200, 201), r.text
        return r.json()  # type: ignore[no-any-return]

    bot = await post("/v1/auth/keys", {"name": "ci-bot", "role": "operator"}, master)
    reader = await post("/v1/auth/keys", {"name": "reader", "role": "viewer"}, master)
    r = await d.http.put(f"/v1/auth/keys/{bot['id']}/quotas", json={"maxConcurrentSessions": 3,
                                                                    "maxSpendPerWindow": 2}, headers=master)
    assert r.status_code == 200
    bot_work = await post("/v1/sessions", {"workDir": str(workdir), "name": "bot-work", "prompt": "say:hi",
                                           "reuse": False}, {"Authorization": f"Bearer {bot['key']}"})
    await d.wait_event(bot_work["id"], "turn")
    bob = idp.mint({"sub": "u-2", "email": "bob@example.com", "name": "Bob", "aegis_role": "operator"})
    await post("/v1/sessions", {"workDir": str(workdir), "name": "bob-work", "reuse": False},
               {"Authorization": f"Bearer {bob}"})
    await post("/v1/sessions", {"workDir": str(workdir), "name": "by-master", "reuse": False}, master)

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/")
        page.click("#sso-link")
        expect(page.locator("#whoami-name")).to_have_text("ada@example.com (admin)")
        expect(page.locator("#nav-users")).to_be_visible()
        page.keyboard.press("g")
        page.keyboard.press("u")
        expect(page.locator("#view-users")).to_be_visible()
        row = page.locator(f"#key-rows tr[data-key-id='{bot['id']}']")
        expect(row).to_contain_text("ci-bot")
        expect(row.locator("[data-label='Role']")).to_have_text("operator")
        expect(row.locator("[data-label='Last used']")).to_contain_text("ago")
        expect(row.locator("[data-label='Quotas and use']")).to_contain_text("1 / 3 sessions at once")
        expect(row.locator("[data-label='Quotas and use']")).to_contain_text("/ $2 per 60 min")
        expect(row.locator("[data-label='Quotas and use']")).to_contain_text("15 / ∞ tokens")
        expect(row.locator("[data-label='Sessions'] a")).to_have_text("bot-work")
        other = page.locator(f"#key-rows tr[data-key-id='{reader['id']}']")
        expect(other.locator("[data-label='Last used']")).to_have_text("never")
        expect(other.locator("[data-label='Quotas and use']")).to_contain_text("no quotas")
        expect(other.locator("[data-label='Sessions']")).to_have_text("none")
        # single sign-on users: ada on the dashboard, bob through a bearer token, each with what they own
        ada_row = page.locator("#sso-rows tr[data-sub='u-1']")
        expect(ada_row).to_contain_text("ada@example.com")
        expect(ada_row.locator("[data-label='Role']")).to_have_text("admin")
        expect(ada_row.locator("[data-label='Signed in']")).to_contain_text("dashboard (1 open")
        expect(ada_row.locator("[data-label='Last seen']")).to_contain_text("s ago")
        bob_row = page.locator("#sso-rows tr[data-sub='u-2']")
        expect(bob_row.locator("[data-label='Signed in']")).to_have_text("bearer token (ag login)")
        expect(bob_row.locator("[data-label='Sessions'] a")).to_have_text("bob-work")
        expect(page.locator("#owner-rows tr[data-owner='']")).to_contain_text("by-master")
        body = page.locator("#view-users").inner_text()
        assert bot["key"] not in body and reader["key"] not in body
        shot(page, tmp_path, f"users-{width}")
        check_layout(page, width)
        row.locator("[data-label='Sessions'] a").click()
        expect(page.locator("#s-name")).to_have_text("bot-work")
        # every view fits this width
        for view in ("sessions", "pipelines", "audit", "overview"):
            page.click(f"nav a[data-view='{view}']")
            expect(page.locator(f"#view-{view}")).to_be_visible()
            if view == "audit":
                expect(page.locator("#audit-rows")).to_contain_text("key.create")
            if view == "sessions":
                expect(page.locator("#session-rows tr")).to_have_count(3)
            shot(page, tmp_path, f"{view}-admin-{width}")
            check_layout(page, width)

        # a viewer: no Users entry, the view says why, and the API refuses
        viewer = page.context.browser.new_page(viewport=viewport(width))
        viewer.set_default_timeout(TIMEOUT_MS)
        errors = watch(viewer)
        viewer.goto(base + "/dashboard/")
        viewer.fill("#token", reader["key"])
        viewer.click("#login-form button")
        expect(viewer.locator("#whoami-name")).to_have_text("key:reader (viewer)")
        expect(viewer.locator("#view-sessions")).to_be_visible()
        expect(viewer.locator("#nav-users")).to_be_hidden()
        viewer.keyboard.press("g")
        viewer.keyboard.press("u")
        expect(viewer.locator("#view-forbidden")).to_be_visible()
        expect(viewer.locator("#forbidden-text")).to_contain_text("for admins")
        expect(viewer.locator("#view-users")).to_be_hidden()
        status = viewer.evaluate("""(key) => fetch('/v1/auth/users', {headers: {Authorization: 'Bearer ' + key}})
                                        .then((r) => r.status)""", reader["key"])
        assert status == 403
        viewer.click("nav a[data-view='overview']")  # a viewer's plots: its own use, by day
        expect(viewer.locator("#plots-note")).to_contain_text("Your own use")
        expect(viewer.locator("figure[data-plot='tokens'] rect.bar")).to_have_count(14)
        check_layout(viewer, width)
        assert not page_errors(errors), errors

    with trio.fail_after(120):
        await trio.to_thread.run_sync(partial(_browse, scenario, viewport(width)))


@pytest.mark.parametrize("width", WIDTHS)
async def test_pipelines_empty_state_and_stage_links(daemon: DaemonHandle, workdir: Path, tmp_path: Path,
                                                     width: int) -> None:
    base = daemon.daemon.http_url
    host = base.split("//", 1)[1]

    def scenario(page: Any) -> str:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/#/pipelines")
        empty = page.locator("#no-pipelines")
        expect(empty).to_be_visible()
        expect(empty).to_contain_text("No pipelines yet")
        expect(empty).to_contain_text("dependsOn")
        expect(empty.locator("pre")).to_contain_text(f"{host}/v1/pipelines")
        expect(page.locator("#pipelines-table")).to_be_hidden()
        shot(page, tmp_path, f"pipelines-empty-{width}")
        check_layout(page, width)
        # one appears without a reload (SSE), and each stage links to its session
        with httpx.Client(base_url=base) as api:
            r = api.post("/v1/pipelines", json={"name": "two-steps", "workDir": str(workdir), "stages": [
                {"name": "build", "prompt": "say:built"},
                {"name": "docs", "prompt": "say:documented", "dependsOn": ["build"]}]})
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
        row = page.locator(f"#pipeline-rows tr[data-id='{pid}']")
        expect(row.locator("[data-label='Status'] .badge")).to_have_text("completed")
        expect(empty).to_be_hidden()
        with httpx.Client(base_url=base) as api:
            stages = {s["name"]: s for s in api.get(f"/v1/pipelines/{pid}").json()["stages"]}
        for name in ("build", "docs"):
            link = row.locator(f"li[data-stage='{name}'] a.stage-session")
            expect(link).to_have_count(1)
            assert link.get_attribute("href") == f"#/sessions/{stages[name]['sessionId']}"
        shot(page, tmp_path, f"pipelines-{width}")
        check_layout(page, width)
        row.locator("li[data-stage='docs'] a.stage-session").click()
        expect(page.locator("#s-id")).to_have_text(stages["docs"]["sessionId"])
        expect(page.locator("#transcript")).to_contain_text("documented")
        return str(pid)

    with trio.fail_after(90):
        pid = await trio.to_thread.run_sync(partial(_browse, scenario, viewport(width)))
    assert (await daemon.http.get(f"/v1/pipelines/{pid}")).json()["status"] == "completed"


async def test_overview_approves_the_request_it_shows(daemon: DaemonHandle, workdir: Path, tmp_path: Path) -> None:
    """In place as on the session page: two requests pending, the Overview shows the first, which is decided
    elsewhere before the page hears of it. Approve names the request shown: nothing is decided, the page says which
    one is pending and shows it; approving that one then works. At a phone's width."""
    import re

    from ..test_security_approve import pending, two_pending

    sid, first, second = await two_pending(daemon, workdir)
    base = daemon.daemon.http_url

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.route(re.compile(r"/v1/events"), lambda route: route.abort())  # no live refresh: a stale tab
        page.goto(base + "/dashboard/#/overview")
        item = page.locator(f".pending-item[data-session='{sid}']")
        expect(item).to_have_attribute("data-request-id", first)
        check_layout(page, 390, buttons=".pending-item button")
        with httpx.Client(base_url=base) as api:
            assert api.post(f"/v1/sessions/{sid}/reject", json={"requestId": first}).status_code == 200
        with page.expect_request(lambda r: r.url.endswith("/approve")) as req:
            item.locator("button.approve").click()
        assert req.value.post_data_json == {"requestId": first}
        expect(page.locator("#toast")).to_contain_text(f"the pending one is {second}")
        expect(item).to_have_attribute("data-request-id", second)  # what is true now
        assert pending(daemon, sid) == second
        with page.expect_request(lambda r: r.url.endswith("/approve")) as req:
            item.locator("button.approve").click()
        assert req.value.post_data_json == {"requestId": second}
        expect(item).to_have_count(0)
        shot(page, tmp_path, "overview-decided-390")

    with trio.fail_after(90):
        await trio.to_thread.run_sync(partial(_browse, scenario, viewport(390)))
    audit = (await daemon.http.get("/v1/audit?action=permission.*")).json()["records"]
    assert [(a["action"], a["detail"]["requestId"]) for a in audit] == [("permission.reject", first),
                                                                        ("permission.approve", second)]


@pytest.mark.parametrize("width", WIDTHS)
async def test_nodes_view_and_the_node_of_each_session(daemon: DaemonHandle, workdir: Path, tmp_path: Path,
                                                       width: int) -> None:
    """The Nodes view lists this daemon (a cluster of one) with its status and load, and an admin drains and
    undrains it from there; a session shows its node; the session list has a Node column once there are several
    nodes (the second one here is a stubbed answer of GET /v1/nodes: one daemon has one node)."""
    import json
    import re

    base = daemon.daemon.http_url
    s = await daemon.create(workdir, name="on-this-node", reuse=False)
    await daemon.wait_status(s["id"], "idle")
    me = (await daemon.http.get("/v1/nodes")).json()[0]
    nid = me["id"]

    def scenario(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(base + "/dashboard/#/nodes")
        row = page.locator(f"#node-rows tr[data-node='{nid}']")
        expect(row.locator(".badge")).to_have_text("up")
        expect(row).to_contain_text("this node")
        expect(row.locator(".sessions")).to_have_text(f"1 / {me['capacity']}")
        expect(row).to_contain_text(me["version"])
        shot(page, tmp_path, f"nodes-{width}")
        check_layout(page, width)
        row.locator("button.drain").click()  # local callers are admins
        expect(row.locator(".badge")).to_have_text("draining")
        expect(page.locator("#toast")).to_contain_text(f"Draining {nid}")
        row.locator("button.drain").click()
        expect(row.locator(".badge")).to_have_text("up")
        # one node: no Node column in the list, the session page names its node
        page.goto(base + "/dashboard/#/sessions")
        srow = page.locator(f"tr[data-id='{s['id']}']")
        expect(srow).to_contain_text("on-this-node")
        expect(srow.locator("td.node-col")).to_be_hidden()
        srow.click()
        expect(page.locator("#s-node")).to_have_text(nid)
        # several nodes: the Node column shows each session's node
        other = {**me, "id": "other-node", "url": "http://10.0.0.2:9100", "local": False, "sessions": 0}
        page.route(re.compile(r"/v1/nodes$"), lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps([me, other])))
        page.goto(base + "/dashboard/#/sessions")
        page.reload()
        if width > 800:  # a phone shows each row as a card, without the table's head
            expect(page.locator("th.node-col")).to_be_visible()
        expect(page.locator(f"tr[data-id='{s['id']}'] td.node-col")).to_be_visible()
        expect(page.locator(f"tr[data-id='{s['id']}'] td.node-col")).to_have_text(nid)
        check_layout(page, width)
        page.goto(base + "/dashboard/#/nodes")
        expect(page.locator("#node-rows tr")).to_have_count(2)

    with trio.fail_after(90):
        await trio.to_thread.run_sync(partial(_browse, scenario, viewport(width)))
    audit = (await daemon.http.get("/v1/audit?action=node.*")).json()["records"]
    assert [a["action"] for a in audit] == ["node.drain", "node.undrain"]
