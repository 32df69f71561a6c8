"""Authentication, roles, ownership, SSE tokens, rate limits and the audit log, over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import DaemonHandle

MASTER = "m" * 40


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_key(d: DaemonHandle, role: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
    r = await d.http.post("/v1/auth/keys", json={"name": name or role, "role": role, **extra},
                          headers=bearer(MASTER))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith("aegis_") and len(body["key"]) == 6 + 64 and len(body["id"]) == 16
    return body  # type: ignore[no-any-return]


@pytest.fixture
async def authd(daemon_factory: Any) -> DaemonHandle:
    return await daemon_factory(authToken=MASTER)  # type: ignore[no-any-return]


async def test_keys_lifecycle_and_alias(authd: DaemonHandle) -> None:
    k = await make_key(authd, "operator", "ci")
    listed = (await authd.http.get("/v1/keys", headers=bearer(MASTER))).json()
    assert [x["name"] for x in listed] == ["ci"]
    assert "key" not in listed[0] and "hash" not in json.dumps(listed)
    r = await authd.http.post("/v1/auth/verify", json={"token": k["key"]})
    assert r.json() == {"valid": True, "role": "operator", "name": "key:ci"}
    assert (await authd.http.post("/v1/auth/verify", json={"token": "nope"})).json() == {"valid": False}
    r = await authd.http.delete(f"/v1/auth/keys/{k['id']}", headers=bearer(MASTER))
    assert r.json() == {"ok": True}
    assert (await authd.http.get("/v1/sessions", headers=bearer(k["key"]))).status_code == 401
    assert (await authd.http.delete(f"/v1/keys/{k['id']}", headers=bearer(MASTER))).status_code == 404


ROUTES = [  # (method, path, permission needed); {sid} is a session owned by the caller
    ("GET", "/v1/sessions", None),
    ("GET", "/v1/sessions/{sid}", None),
    ("GET", "/v1/sessions/{sid}/read", None),
    ("POST", "/v1/sessions", "create"),
    ("POST", "/v1/sessions/{sid}/send", "send"),
    ("POST", "/v1/sessions/{sid}/approve", "approve"),
    ("POST", "/v1/sessions/{sid}/reject", "reject"),
    ("POST", "/v1/sessions/{sid}/interrupt", "send"),
    ("DELETE", "/v1/sessions/{sid}", "kill"),
    ("GET", "/v1/auth/keys", "admin"),
    ("POST", "/v1/auth/keys", "admin"),
    ("GET", "/v1/audit", "admin"),
]
ROLE_CAN = {"admin": {"create", "send", "approve", "reject", "kill", "admin"},
            "operator": {"create", "send", "approve", "reject", "kill"},
            "viewer": set()}


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
async def test_role_matrix(authd: DaemonHandle, workdir: Path, role: str) -> None:
    k = await make_key(authd, role)
    owner = k if role != "viewer" else await make_key(authd, "admin", "owner-for-viewer")
    for method, path, need in ROUTES:
        # a fresh session of this caller for each mutating route (kill ends it)
        s = await authd.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False},
                                  headers=bearer(owner["key"] if role != "viewer" else MASTER))
        sid = s.json()["id"]
        body: Any = None
        if path.endswith("/send"):
            body = {"text": "say:x"}
        elif path == "/v1/sessions":
            body = {"workDir": str(workdir), "reuse": False} if method == "POST" else None
        elif path == "/v1/auth/keys" and method == "POST":
            body = {"name": "made-by-" + role}
        r = await authd.http.request(method, path.format(sid=sid), json=body, headers=bearer(k["key"]))
        allowed = need is None or need in ROLE_CAN[role]
        if role == "viewer" and "{sid}" in path:
            # a viewer sees only its own sessions: this one is the master's
            assert r.status_code == 403 and r.json()["code"] in ("SESSION_FORBIDDEN", "FORBIDDEN"), (path, r.text)
            continue
        if allowed:
            assert r.status_code < 400 or r.status_code == 409, (role, method, path, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, method, path, r.status_code, r.text)


async def test_ownership_isolation(authd: DaemonHandle, workdir: Path) -> None:
    a = await make_key(authd, "operator", "alice")
    b = await make_key(authd, "operator", "bob")
    sa = (await authd.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(a["key"]))).json()
    sb = (await authd.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(b["key"]))).json()
    assert sa["id"] != sb["id"]  # no reuse across owners
    assert sa["ownerKeyId"] == a["id"]
    la = (await authd.http.get("/v1/sessions", headers=bearer(a["key"]))).json()["sessions"]
    assert [s["id"] for s in la] == [sa["id"]]
    r = await authd.http.post(f"/v1/sessions/{sb['id']}/send", json={"text": "x"}, headers=bearer(a["key"]))
    assert r.status_code == 403 and r.json()["code"] == "SESSION_FORBIDDEN"
    assert (await authd.http.delete(f"/v1/sessions/{sb['id']}", headers=bearer(a["key"]))).status_code == 403
    every = (await authd.http.get("/v1/sessions", headers=bearer(MASTER))).json()["sessions"]
    assert {s["id"] for s in every} == {sa["id"], sb["id"]}


async def test_sse_token_single_use(authd: DaemonHandle) -> None:
    r = await authd.http.post("/v1/auth/sse-token", headers=bearer(MASTER))
    assert r.status_code == 201
    token = r.json()["token"]
    assert token.startswith("sse_") and len(token) == 4 + 64
    async with authd.http.stream("GET", f"/v1/events?token={token}") as resp:
        assert resp.status_code == 200
    r = await authd.http.get(f"/v1/events?token={token}")
    assert r.status_code == 401  # single use
    k = await make_key(authd, "viewer")
    r = await authd.http.get(f"/v1/events?token={k['key']}")
    assert r.status_code == 401  # long-lived keys never go in URLs
    for _ in range(5):
        assert (await authd.http.post("/v1/auth/sse-token", headers=bearer(k["key"]))).status_code == 201
    r = await authd.http.post("/v1/auth/sse-token", headers=bearer(k["key"]))
    assert r.status_code == 429


async def test_sse_token_expiry_with_autojump_clock(autojump_clock: Any) -> None:
    from aegisd.auth._sse_tokens import SseTokens
    from aegisd.core.errors import RateLimited

    tokens = SseTokens()
    t, ttl = tokens.mint("alice", "key:a")
    assert ttl == 60
    assert tokens.consume(t) == "alice"
    assert tokens.consume(t) is None  # single use
    t2, _ = tokens.mint("alice", "key:a")
    await trio.sleep(59.9)
    t3, _ = tokens.mint("alice", "key:a")
    await trio.sleep(0.2)
    assert tokens.consume(t2) is None  # expired after 60 s
    assert tokens.consume(t3) == "alice"
    for _ in range(5):
        tokens.mint("bob", "key:b")
    with pytest.raises(RateLimited):
        tokens.mint("bob", "key:b")
    await trio.sleep(61)
    tokens.mint("bob", "key:b")  # the old ones expired, so there is room again


async def test_rotation_grace(authd: DaemonHandle) -> None:
    k = await make_key(authd, "operator")
    r = await authd.http.post("/v1/auth/keys/rotate", json={"keyId": k["id"], "gracePeriodSeconds": 3600},
                              headers=bearer(MASTER))
    assert r.status_code == 200
    new = r.json()["key"]
    assert new != k["key"] and r.json()["graceExpiresAt"]
    for t in (k["key"], new):
        assert (await authd.http.get("/v1/sessions", headers=bearer(t))).status_code == 200
    r = await authd.http.post(f"/v1/auth/keys/{k['id']}/rotate", json={"gracePeriodSeconds": 0},
                              headers=bearer(MASTER))
    newest = r.json()["key"]
    assert (await authd.http.get("/v1/sessions", headers=bearer(new))).status_code == 401
    assert (await authd.http.get("/v1/sessions", headers=bearer(newest))).status_code == 200


async def test_auth_failures_throttled(authd: DaemonHandle) -> None:
    for _ in range(5):
        assert (await authd.http.get("/v1/sessions", headers=bearer("wrong"))).status_code == 401
    r = await authd.http.get("/v1/sessions", headers=bearer("wrong"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # per IP and credential: the valid token from the same IP is not locked out (tests/test_security_throttle.py)
    assert (await authd.http.get("/v1/sessions", headers=bearer(MASTER))).status_code == 200
    assert (await authd.http.get("/v1/health")).status_code == 200


async def test_per_key_rate_limit(authd: DaemonHandle) -> None:
    k = await make_key(authd, "viewer", rateLimit=3)
    codes = [(await authd.http.get("/v1/sessions", headers=bearer(k["key"]))).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


async def test_keys_reload_without_restart(authd: DaemonHandle) -> None:
    from aegisd.auth import KeyStore
    from aegisd.store import Collection

    # another writer of the same store (e.g. another daemon on a shared PostgreSQL): picked up within a second
    other = KeyStore(Collection(authd.daemon.store, "keys"))
    _, secret = await other.create("out-of-band", role="operator")
    with trio.fail_after(5):
        while "out-of-band" not in [k.name for k in authd.daemon.keys.list()]:
            await trio.sleep(0.05)
    assert (await authd.http.get("/v1/sessions", headers=bearer(secret))).status_code == 200


async def test_localhost_zero_config_and_strict_rbac(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory()
    assert (await d.http.post("/v1/sessions", json={"workDir": str(workdir)})).status_code == 201
    strict = await daemon_factory(strictRbac=True, socket=str(Path(d.daemon.socket_path).with_name("b.sock")),
                                  stateDir=str(Path(d.daemon.config.stateDir).with_name("state-b")))
    r = await strict.http.post("/v1/sessions", json={"workDir": str(workdir)})
    assert r.status_code == 403
    assert (await strict.http.get("/v1/sessions")).status_code == 200


async def test_audit_log_records_and_detects_tampering(authd: DaemonHandle, workdir: Path) -> None:
    k = await make_key(authd, "operator", "auditee")
    s = (await authd.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "tool:edit:E:f"},
                               headers=bearer(k["key"]))).json()
    await authd.wait_event(s["id"], "permission.requested")
    await authd.http.post(f"/v1/sessions/{s['id']}/approve", headers=bearer(k["key"]))
    await authd.http.delete(f"/v1/sessions/{s['id']}", headers=bearer(k["key"]))
    await authd.http.get("/v1/sessions", headers=bearer("bad-token"))
    r = await authd.http.get("/v1/audit?verify=true", headers=bearer(MASTER))
    body = r.json()
    actions = [rec["action"] for rec in body["records"]]
    assert actions == ["key.create", "session.create", "permission.approve", "session.kill", "auth.failure"]
    assert body["records"][1]["actor"] == "key:auditee" and body["records"][1]["sessionId"] == s["id"]
    assert body["integrity"]["ok"] is True
    r = await authd.http.get("/v1/audit?action=session.*&format=csv", headers=bearer(MASTER))
    assert r.headers["content-type"].startswith("text/csv") and r.text.count("session.") == 2
    r = await authd.http.get("/v1/audit?format=ndjson&limit=2", headers=bearer(MASTER))
    assert len(r.text.strip().splitlines()) == 2 and r.headers["x-aegis-audit-cursor"]
    if authd.daemon.store.name == "file":  # tamper with one record on disk: verification notices
        path = authd.daemon.config.state_path / "logs" / "audit.jsonl"  # the file store's audit log
        lines = path.read_text().splitlines()
        rec = json.loads(lines[2])
        rec["data"]["detail"] = {"optionId": "something-else"}
        lines[2] = json.dumps(rec)
        path.write_text("\n".join(lines) + "\n")
        body = (await authd.http.get("/v1/audit?verify=true", headers=bearer(MASTER))).json()
        assert body["integrity"]["ok"] is False and body["integrity"]["badSeq"] == 3
    assert (await authd.http.get("/v1/audit", headers=bearer(k["key"]))).status_code == 403


async def test_refuses_non_loopback_without_auth_and_allows_with_keys(tmp_path: Path, short_tmp: Path) -> None:
    from aegisd.app.daemon import Daemon
    from aegisd.core.errors import ValidationError

    from .conftest import make_config

    cfg = make_config(tmp_path, short_tmp, host="0.0.0.0")
    with pytest.raises(ValidationError, match="non-loopback"):
        Daemon(cfg).check_bind_safety()
    await create_key_offline(cfg, "remote", role="admin")
    await Daemon(cfg).check_bind_safety_at_start()


async def create_key_offline(cfg: Any, name: str, **kw: Any) -> Any:
    """A key put in the daemon's store while no daemon runs; returns the KeyInfo."""
    from aegisd.auth import KeyStore
    from aegisd.store import Collection, open_store

    cfg.state_path.mkdir(parents=True, exist_ok=True)
    st = open_store(cfg)
    await st.open()
    try:
        keys = KeyStore(Collection(st, "keys"))
        await keys.open()
        info, _ = await keys.create(name, **kw)
        return info
    finally:
        await st.close()


async def test_socket_acts_as_admin(authd: DaemonHandle) -> None:
    from .test_control import connect

    c = await connect(authd)
    r = await c.call("auth.keys.create", name="via-socket", role="viewer")
    assert r["ok"] is True and r["result"]["key"].startswith("aegis_")
    await c.stream.aclose()
    _ = (httpx, trio)


async def test_per_key_permission_override(authd: DaemonHandle, workdir: Path) -> None:
    # a viewer allowed to approve only, and an operator stripped of kill
    approver = await make_key(authd, "viewer", "approver", permissions=["approve"])
    no_kill = await make_key(authd, "operator", "no-kill", permissions=["create", "send"])
    s = (await authd.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False},
                               headers=bearer(no_kill["key"]))).json()
    r = await authd.http.delete(f"/v1/sessions/{s['id']}", headers=bearer(no_kill["key"]))
    assert r.status_code == 403 and "kill" in r.json()["message"]
    r = await authd.http.post("/v1/sessions", json={"workDir": str(workdir)}, headers=bearer(approver["key"]))
    assert r.status_code == 403
    r = await authd.http.post("/v1/auth/keys", json={"name": "bad", "permissions": ["fly"]}, headers=bearer(MASTER))
    assert r.status_code == 400


async def test_only_admins_attach_the_aegis_mcp_server(authd: DaemonHandle, workdir: Path) -> None:
    op_key = await make_key(authd, "operator", "ci")
    r = await authd.http.post("/v1/sessions", json={"workDir": str(workdir), "mcpServers": ["aegis"]},
                              headers=bearer(op_key["key"]))
    assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
    r = await authd.http.post("/v1/sessions", json={"workDir": str(workdir), "mcpServers": ["aegis"]},
                              headers=bearer(MASTER))
    assert r.status_code == 201 and r.json()["mcpServers"] == ["aegis"]
