"""Issue 10, item 7: throttling that locks out attackers, not users.

Failed authentications are counted per client IP and presented credential: on loopback the IP is the user's own
machine, and a process trying wrong tokens there used to lock the user's valid token out for a minute. A
brute-forcer cycling credentials is still slowed down (429 with Retry-After, without its guesses being checked),
on every surface that takes a credential: bearer tokens, POST /v1/auth/verify, SSE `?token=`, the terminal's
first-message auth. And a daemon whose only API keys have expired refuses a non-loopback bind."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from aegisd.auth import KeyInfo
from aegisd.auth._keys import secret_digest
from aegisd.core.models import now_ms

from .conftest import DaemonHandle, agent_env, make_config
from .test_auth import MASTER, bearer, create_key_offline, make_key
from .test_terminal import ws_url

DISTINCT_PER_IP = 10  # aegisd.auth.AuthThrottle's defaults
PER_CREDENTIAL = 5


@pytest.fixture
async def authd(daemon_factory: Any) -> DaemonHandle:
    return await daemon_factory(authToken=MASTER)  # type: ignore[no-any-return]


async def audit_failures(d: DaemonHandle) -> list[dict[str, Any]]:
    r = await d.http.get("/v1/audit?action=auth.failure&limit=1000", headers=bearer(MASTER))
    assert r.status_code == 200, r.text
    return r.json()["records"]  # type: ignore[no-any-return]


def assert_throttled(r: Any) -> None:
    assert r.status_code == 429, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == "RATE_LIMITED" and body["requestId"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60


async def test_users_token_keeps_working_while_a_brute_forcer_on_the_same_ip_is_throttled(
        authd: DaemonHandle) -> None:
    h = authd.http
    user = await make_key(authd, "operator", "user")
    assert (await h.get("/v1/sessions", headers=bearer(user["key"]))).status_code == 200  # used from here before
    codes = []
    for i in range(DISTINCT_PER_IP + 5):
        r = await h.get("/v1/sessions", headers=bearer(f"aegis_guess{i:064d}"))
        codes.append(r.status_code)
        if r.status_code == 429:
            assert_throttled(r)
        # interleaved: the user's key, and the master token, keep working from the same IP
        assert (await h.get("/v1/sessions", headers=bearer(user["key"]))).status_code == 200
        assert (await h.get("/v1/sessions", headers=bearer(MASTER))).status_code == 200
    assert codes == [401] * DISTINCT_PER_IP + [429] * 5
    # an already failed guess is not checked again either, and only checked failures are audited (a flood of
    # refused guesses cannot flood the audit log)
    assert_throttled(await h.get("/v1/sessions", headers=bearer(f"aegis_guess{0:064d}")))
    failures = await audit_failures(authd)
    assert len(failures) == DISTINCT_PER_IP and {f["detail"]["ip"] for f in failures} == {"127.0.0.1"}
    assert "guess" not in json.dumps(failures)  # no credential, nor a piece of one, in the audit log


async def test_a_wrong_token_retried_is_throttled_alone(authd: DaemonHandle) -> None:
    """A script stuck with a wrong (or revoked) token: that token gets 429 after 5 failures; a valid token never
    used from this IP before still works (today's main answered it 429 too)."""
    h = authd.http
    for _ in range(PER_CREDENTIAL):
        assert (await h.get("/v1/sessions", headers=bearer("stale-token"))).status_code == 401
    assert_throttled(await h.get("/v1/sessions", headers=bearer("stale-token")))
    assert (await h.get("/v1/sessions", headers=bearer(MASTER))).status_code == 200
    assert (await h.get("/v1/health")).status_code == 200


async def test_verify_is_throttled_and_audited(authd: DaemonHandle) -> None:
    h = authd.http
    user = await make_key(authd, "viewer", "user")
    assert (await h.post("/v1/auth/verify", json={"token": user["key"]})).json()["valid"] is True
    for i in range(DISTINCT_PER_IP):
        r = await h.post("/v1/auth/verify", json={"token": f"aegis_guess{i:064d}"})
        assert r.status_code == 200 and r.json() == {"valid": False}
    r = await h.post("/v1/auth/verify", json={"token": f"aegis_guess{99:064d}"})
    assert_throttled(r)  # the guess is answered without being checked: no oracle
    assert "valid" not in r.json()
    assert (await h.post("/v1/auth/verify", json={"token": user["key"]})).json()["valid"] is True
    failures = await audit_failures(authd)
    assert len(failures) == DISTINCT_PER_IP
    assert all(f["detail"] == {"ip": "127.0.0.1", "via": "auth.verify"} and f["actor"] == "system"
               for f in failures)


async def test_sse_query_token_is_throttled_and_audited(authd: DaemonHandle) -> None:
    h = authd.http
    user = await make_key(authd, "viewer", "dashboard")
    assert (await h.get("/v1/sessions", headers=bearer(user["key"]))).status_code == 200  # in use from here
    for i in range(DISTINCT_PER_IP):
        r = await h.get(f"/v1/events?token=sse_{i:064x}")
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    assert_throttled(await h.get(f"/v1/events?token=sse_{99:064x}"))
    assert len(await audit_failures(authd)) == DISTINCT_PER_IP
    # the dashboard's own event stream still opens: an SSE token minted by its key is vouched for
    r = await h.post("/v1/auth/sse-token", headers=bearer(user["key"]))
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    async with h.stream("GET", f"/v1/events?token={token}") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    # used up: presented again it is an unknown credential, refused unchecked while the IP is over its ceiling
    assert_throttled(await h.get(f"/v1/events?token={token}"))


async def test_terminal_first_message_auth_is_throttled_and_audited(authd: DaemonHandle,
                                                                    workdir: Path) -> None:
    sid = (await authd.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(MASTER))).json()["id"]

    async def first_message(token: str) -> tuple[int | None, dict[str, Any]]:
        async with open_websocket_url(ws_url(authd, sid)) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            with trio.fail_after(10):
                got = json.loads(await ws.get_message())
                if got.get("type") != "error":
                    return None, got
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    code: int = exc.reason.code
            await ws._stream.aclose()  # see tests/test_terminal.py: server_closed
            return code, got

    for i in range(DISTINCT_PER_IP):
        code, got = await first_message(f"aegis_guess{i:064d}")
        assert code == 4401 and got["code"] == "UNAUTHORIZED", got
    code, got = await first_message(f"aegis_guess{99:064d}")
    assert code == 4429 and got["code"] == "RATE_LIMITED"
    assert len(await audit_failures(authd)) == DISTINCT_PER_IP
    code, got = await first_message(MASTER)  # the user's token (known good here) still opens the terminal
    assert code is None and got["type"] == "pane"


async def test_bind_safety_ignores_expired_keys(tmp_path: Path, short_tmp: Path) -> None:
    """A daemon whose only API keys have expired has no way to authenticate anyone: it must not listen on a
    non-loopback address without a master token (it did, because expired keys counted)."""
    cfg = make_config(tmp_path, short_tmp, host="0.0.0.0")
    # a hand-written keys.json: moved into the store at start
    info = KeyInfo(id="k1", name="old", role="admin", hash=secret_digest("aegis_x"), createdAt=now_ms())
    info.expiresAt = info.createdAt - 1000  # expired a second before it was made
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    (cfg.state_path / "keys.json").write_text(json.dumps({"version": 1, "keys": [dataclasses.asdict(info)]}))
    env = {**agent_env(tmp_path), "AEGIS_STATE_DIR": str(cfg.state_path), "AEGIS_SOCKET": str(cfg.socket_path),
           "AEGIS_HOST": "0.0.0.0", "AEGIS_PORT": "0", "AEGIS_ALLOWED_WORK_DIRS": str(tmp_path)}
    with trio.fail_after(30):
        proc = await trio.run_process([sys.executable, "-m", "aegisd"], env=env, cwd=str(tmp_path), check=False,
                                      capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert b"refusing to listen on non-loopback address 0.0.0.0" in proc.stderr
    assert not os.path.exists(cfg.socket_path)
    # a key that has not expired (or a master token) is enough
    from aegisd.app.daemon import Daemon

    assert (cfg.state_path / "keys.json.migrated").exists()
    await create_key_offline(cfg, "current", role="admin", ttl_days=1)
    await Daemon(cfg).check_bind_safety_at_start()
