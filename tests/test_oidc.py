"""Single sign-on against a real (small) OpenID provider served in the test: bearer JWTs, the dashboard's
authorization-code flow with PKCE and its cookie, the device flow proxy and `ag login`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from aegisd.core.config import load_config
from aegisd.core.errors import ValidationError

from .conftest import DaemonHandle
from .fake_idp import CLIENT_ID, FakeIdp

pytest.importorskip("jwt", reason="PyJWT not installed (pip install 'aegis-py[oidc]')")


async def sso_daemon(daemon_factory: Any, nursery: trio.Nursery, **oidc: Any) -> tuple[DaemonHandle, FakeIdp]:
    idp = FakeIdp(client_secret=oidc.pop("clientSecret", ""))
    issuer = await nursery.start(idp.serve)
    d: DaemonHandle = await daemon_factory(oidc={"issuer": issuer, "clientId": CLIENT_ID,
                                                 "clientSecret": idp.client_secret, **oidc})
    assert d.daemon.oidc is not None
    with trio.fail_after(10):
        await d.daemon.oidc.ready.wait()  # discovery and keys fetched
    return d, idp


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_bearer_tokens(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    d, idp = await sso_daemon(daemon_factory, nursery)
    h = d.http
    assert (await h.get("/v1/sessions")).status_code == 401  # auth is on now, even on loopback
    ada = idp.mint()
    r = await h.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(ada))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert d.manager.records[sid].ownerKeyId == "oidc:u-1"
    assert (await h.post("/v1/auth/verify", json={"token": ada})).json() == {
        "valid": True, "role": "operator", "name": "oidc:ada@example.com"}
    # another person sees only their own sessions; a token without the role claim is a viewer
    bob = idp.mint({"sub": "u-2", "email": "bob@example.com", "aegis_role": None})
    assert (await h.get(f"/v1/sessions/{sid}", headers=bearer(bob))).status_code == 403
    r = await h.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(bob))
    assert r.status_code == 403 and "create" in r.json()["error"]
    admin = idp.mint({"aegis_role": "admin"})
    assert (await h.get("/v1/auth/keys", headers=bearer(admin))).status_code == 200
    assert (await h.get("/v1/auth/keys", headers=bearer(ada))).status_code == 403
    # refused: expired, another audience, another issuer, a forged signature, an unknown key, garbage
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad in (idp.mint(ttl=-120), idp.mint(aud="someone-else"), idp.mint(iss="https://evil.example"),
                idp.mint(key=other_key), idp.mint(kid="k9"), "eyJhbGciOi.x.y"):
        assert (await h.post("/v1/auth/verify", json={"token": bad})).json() == {"valid": False}
    r = await h.get("/v1/sessions", headers=bearer(idp.mint(ttl=-120)))
    assert r.status_code == 401 and r.json()["error"] == "invalid or expired token"
    # an audience of its own for APIs
    assert (await h.get("/v1/sessions", headers=bearer(idp.mint(aud=CLIENT_ID)))).status_code == 200
    audit = (await h.get("/v1/audit?action=session.create", headers=bearer(admin))).json()["records"]
    assert audit[0]["actor"] == "oidc:ada@example.com"


async def test_dashboard_sign_in(daemon_factory: Any, nursery: trio.Nursery, workdir: Path, tmp_path: Path) -> None:
    d, idp = await sso_daemon(daemon_factory, nursery, clientSecret="s3cret")
    base = d.daemon.http_url
    async with httpx.AsyncClient(base_url=base, timeout=20) as browser:
        assert (await browser.get("/auth/session")).json() == {"authenticated": False, "oidc": True}
        r = await browser.get("/auth/login")
        assert r.status_code == 302 and r.headers["location"].startswith(idp.issuer + "/authorize?")
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Lax" in r.headers["set-cookie"]
        r = await browser.get(r.headers["location"])  # the IdP consents at once and sends the browser back
        callback = r.headers["location"]
        assert callback.startswith(base + "/auth/callback?")
        # the callback from another browser (without the state cookie) is refused
        async with httpx.AsyncClient(timeout=20) as stranger:
            r2 = await stranger.get(callback)
            assert r2.status_code == 400 and "another browser" in r2.json()["error"]
        r = await browser.get(callback)
        assert r.status_code == 400 and "expired or was already used" in r.json()["error"]  # state spent above
        # a fresh sign-in goes through
        r = await browser.get(idp.issuer + "/authorize?" + (await browser.get("/auth/login")).headers["location"]
                              .split("?", 1)[1])
        r = await browser.get(r.headers["location"])
        assert r.status_code == 302 and r.headers["location"] == "/dashboard/"
        cookie = r.headers["set-cookie"]
        assert "aegis_session=dsh_" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert idp.token_requests[-1]["client_secret"] == "s3cret" and idp.token_requests[-1]["code_verifier"]
        me = (await browser.get("/auth/session")).json()
        assert me["authenticated"] is True and me["role"] == "operator" and me["identity"]["email"] == "ada@example.com"
        # the cookie is a credential for the API, and the page's own origin may change things
        assert (await browser.get("/v1/sessions")).status_code == 200
        r = await browser.post("/v1/sessions", json={"workDir": str(workdir)}, headers={"Origin": base})
        assert r.status_code == 201
        r = await browser.post("/v1/sessions", json={"workDir": str(workdir)},
                               headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        # the sign-in survives a restart of the daemon; it is stored under a hash of the cookie, never the cookie
        cookie_value = browser.cookies["aegis_session"]
        stored = json.dumps(await d.daemon.store.doc_list("sso-sessions"))
        assert cookie_value not in stored and "ada@example.com" in stored
        d.shutdown.set()
        with trio.fail_after(15):
            await d.done.wait()  # type: ignore[attr-defined]
        d = await daemon_factory(oidc={"issuer": idp.issuer, "clientId": CLIENT_ID, "clientSecret": "s3cret"})
        browser.base_url = httpx.URL(d.daemon.http_url)  # a new port; the cookie is the same
        assert (await browser.get("/auth/session")).json()["authenticated"] is True
        assert (await browser.post("/auth/logout")).status_code == 204
        assert (await browser.get("/v1/sessions")).status_code == 401
        assert "ada@example.com" not in json.dumps(await d.daemon.store.doc_list("sso-sessions"))
    logins = (await d.http.get("/v1/audit?action=auth.sso_login",
                               headers=bearer(idp.mint({"aegis_role": "admin"})))).json()["records"]
    assert [(x["actor"], x["detail"]["role"]) for x in logins] == [("oidc:ada@example.com", "operator")]


async def test_device_flow_and_ag_login(daemon_factory: Any, nursery: trio.Nursery, tmp_path: Path) -> None:
    d, idp = await sso_daemon(daemon_factory, nursery)
    h = d.http
    info = (await h.get("/v1/auth/oidc")).json()
    assert info["enabled"] is True and info["clientId"] == CLIENT_ID and info["ready"] is True
    r = await h.post("/v1/auth/device/authorize", json={"client_id": "not-ours"})
    assert r.status_code == 400 and "client_id" in r.json()["error"]
    start = (await h.post("/v1/auth/device/authorize", json={"client_id": CLIENT_ID})).json()
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": start["device_code"],
            "client_id": CLIENT_ID}
    r = await h.post("/v1/auth/device/token", data=form)  # form-encoded, as OAuth clients send it
    assert r.status_code == 400 and r.json()["error"] == "authorization_pending"  # the IdP's answer, passed on
    idp.approve(start["user_code"])
    token = (await h.post("/v1/auth/device/token", json=form)).json()["access_token"]
    assert (await h.get("/v1/sessions", headers=bearer(token))).status_code == 200
    r = await h.post("/v1/auth/device/token", json={**form, "grant_type": "password"})
    assert r.status_code == 400

    # `ag login`: prints the code, polls until it is confirmed, keeps the token; then --url works with it
    env = {**os.environ, "AEGIS_STATE_DIR": str(tmp_path / "cli-state"), "AEGIS_URL": d.daemon.http_url,
           "NO_COLOR": "1"}
    env.pop("AEGIS_AUTH_TOKEN", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aegisctl", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    proc = await trio.lowlevel.open_process([sys.executable, "-m", "aegisctl", "login", "--no-open"], env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(30):
        while b"confirm the code" not in seen:
            seen += await proc.stdout.receive_some(4096)
        user_code = seen.decode().split("confirm the code ")[1].split(".")[0]
        idp.approve(user_code)
        while (chunk := await proc.stdout.receive_some(4096)):
            seen += chunk
        assert await proc.wait() == 0, seen
    assert b"Signed in to" in seen
    saved = json.loads((tmp_path / "cli-state" / "auth.json").read_text())
    assert list(saved) == [d.daemon.http_url] and oct((tmp_path / "cli-state" / "auth.json").stat().st_mode)[-3:] \
        == "600"
    r = await trio.to_thread.run_sync(run, "whoami")
    assert r.returncode == 0 and "oidc:ada@example.com (operator)" in r.stdout
    r = await trio.to_thread.run_sync(run, "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sessions"] == []
    # short-lived access tokens are renewed with the refresh token (rotated by the IdP) through the proxy
    idp.access_ttl = 20  # under the CLI's 30 s margin: every use renews it
    saved = json.loads((tmp_path / "cli-state" / "auth.json").read_text())[d.daemon.http_url]
    entry = {**saved, "expires_at": 0}
    (tmp_path / "cli-state" / "auth.json").write_text(json.dumps({d.daemon.http_url: entry}))
    r = await trio.to_thread.run_sync(run, "list", "--json")
    assert r.returncode == 0, r.stderr
    assert idp.token_requests[-1]["grant_type"] == "refresh_token"
    renewed = json.loads((tmp_path / "cli-state" / "auth.json").read_text())[d.daemon.http_url]
    assert renewed["refresh_token"] != saved["refresh_token"] and renewed["access_token"] != saved["access_token"]
    idp.refresh_tokens.clear()  # revoked at the IdP: the CLI says to sign in again
    r = await trio.to_thread.run_sync(run, "list")
    assert r.returncode == 1 and "ag login" in r.stderr
    r = await trio.to_thread.run_sync(run, "logout")
    assert "Signed out" in r.stdout
    r = await trio.to_thread.run_sync(run, "list")
    assert r.returncode == 1 and "ag login" in r.stderr


async def test_without_sso(daemon: DaemonHandle) -> None:
    assert (await daemon.http.get("/v1/auth/oidc")).json() == {"enabled": False}
    r = await daemon.http.get("/auth/login")
    assert r.status_code == 404 and "AEGIS_OIDC_ISSUER" in r.json()["error"]
    r = await daemon.http.post("/v1/auth/device/authorize", json={"client_id": "x"})
    assert r.status_code == 404
    assert (await daemon.http.get("/auth/session")).json() == {"authenticated": False, "oidc": False}


@pytest.mark.parametrize("env, message", [
    ({"AEGIS_OIDC_ISSUER": "https://idp.example"}, "both issuer and clientId"),
    ({"AEGIS_OIDC_ISSUER": "http://idp.example", "AEGIS_OIDC_CLIENT_ID": "x"}, "https"),
    ({"AEGIS_OIDC_ISSUER": "https://idp.example", "AEGIS_OIDC_CLIENT_ID": "x", "AEGIS_OIDC_DEFAULT_ROLE": "god"},
     "defaultRole"),
])
def test_bad_oidc_config(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(env=env)


async def test_doctor_checks_sso_and_browser(nursery: trio.Nursery, tmp_path: Path) -> None:
    idp = FakeIdp()
    issuer = await nursery.start(idp.serve)
    base = {**os.environ, "AEGIS_STATE_DIR": str(tmp_path / "st"), "AEGIS_PORT": "0", "NO_COLOR": "1",
            "AEGIS_OIDC_CLIENT_ID": CLIENT_ID, "AEGIS_BROWSER": "/nonexistent/chromium"}

    def doctor(**env: str) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "aegisctl", "doctor", "--json"], env={**base, **env},
                           capture_output=True, text=True, timeout=60)
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    checks = await trio.to_thread.run_sync(lambda: doctor(AEGIS_OIDC_ISSUER=issuer))
    assert checks["single sign-on"]["status"] == "ok" and "discovery ok" in checks["single sign-on"]["detail"]
    assert checks["screenshots"]["status"] == "warn" and "501" in checks["screenshots"]["detail"]
    checks = await trio.to_thread.run_sync(lambda: doctor(AEGIS_OIDC_ISSUER="http://127.0.0.1:1/realm"))
    assert checks["single sign-on"]["status"] == "fail" and checks["single sign-on"]["fix"]
