"""`GET /v1/auth/users` (the dashboard's Users view) and `GET /v1/auth/whoami`, over real HTTP: API keys with
their quotas and use, single sign-on users seen, the sessions each owns; admins only (not operators, viewers or a
session's agent, whatever token it shows); never a secret or a hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from aegisd.auth._agents import AGENT_ACCESS
from aegisd.ops import results

from .test_auth import MASTER, bearer, make_key
from .test_security_agent import idle, probe


def conforms(op: str, body: Any) -> None:
    msgspec.convert(body, results()[op], strict=True)


async def test_users_lists_keys_quotas_use_and_owned_sessions(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    bot = await make_key(d, "operator", "ci-bot")
    reader = await make_key(d, "viewer", "reader")
    r = await d.http.put(f"/v1/auth/keys/{bot['id']}/quotas", json={"maxConcurrentSessions": 3,
                                                                    "maxSpendPerWindow": 2},
                         headers=bearer(MASTER))
    assert r.status_code == 200, r.text
    mine = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "name": "bot-work", "prompt": "say:hi",
                                                   "reuse": False}, headers=bearer(bot["key"]))
    assert mine.status_code == 201, mine.text
    await d.wait_event(mine.json()["id"], "turn")
    master_made = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "name": "by-master",
                                                          "reuse": False}, headers=bearer(MASTER))
    assert master_made.status_code == 201

    r = await d.http.get("/v1/auth/users", headers=bearer(MASTER))
    assert r.status_code == 200, r.text
    body = r.json()
    conforms("auth.users", body)
    keys = {k["name"]: k for k in body["keys"]}
    assert set(keys) == {"ci-bot", "reader"}
    k = keys["ci-bot"]
    assert k["id"] == bot["id"] and k["role"] == "operator" and k["lastUsedAt"] is not None
    assert k["quotas"]["maxConcurrentSessions"] == 3 and k["quotas"]["maxSpendPerWindow"] == 2
    assert k["usage"]["activeSessions"] == 1 and k["usage"]["tokensInWindow"] == 15
    assert k["sessionCount"] == 1 and k["liveSessions"] == 1
    assert [(s["id"], s["name"]) for s in k["sessions"]] == [(mine.json()["id"], "bot-work")]
    assert keys["reader"]["sessionCount"] == 0 and keys["reader"]["lastUsedAt"] is None
    assert body["otherOwners"] == [{"owner": None, "sessionCount": 1, "liveSessions": 1,
                                    "sessions": [{"id": master_made.json()["id"], "name": "by-master",
                                                  "status": master_made.json()["status"],
                                                  "createdAt": master_made.json()["createdAt"]}]}]
    assert body["ssoUsers"] == [] and body["oidc"] is False
    # never a secret or a hash
    text = r.text
    stored = (Path(d.daemon.config.state_path) / "keys.json").read_text()
    assert bot["key"] not in text and reader["key"] not in text and "hash" not in text.lower()
    for h in msgspec.json.decode(stored)["keys"]:
        assert h["hash"] not in text

    # a revoked key's sessions stay visible, under its id
    assert (await d.http.delete(f"/v1/auth/keys/{bot['id']}", headers=bearer(MASTER))).status_code == 200
    body = (await d.http.get("/v1/auth/users", headers=bearer(MASTER))).json()
    assert [k["name"] for k in body["keys"]] == ["reader"]
    assert [o["owner"] for o in body["otherOwners"]] == [None, bot["id"]]

    # admins only: operators and viewers are refused, and a session's agent whatever token it shows
    op = await make_key(d, "operator", "op")
    for who in (op["key"], reader["key"]):
        r = await d.http.get("/v1/auth/users", headers=bearer(who))
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN" and "admin" in r.json()["message"]
    assert "auth.users" not in AGENT_ACCESS
    d.http.headers["Authorization"] = f"Bearer {MASTER}"
    me = await idle(d, workdir)
    (res,) = await probe(d, me, "http", [["GET", "/v1/auth/users", None, MASTER]])
    assert res["status"] == 403, res


async def test_whoami_says_who_and_what(daemon_factory: Any) -> None:
    d = await daemon_factory(authToken=MASTER)
    viewer = await make_key(d, "viewer", "victor")
    limited = await make_key(d, "operator", "limited", permissions=["create", "send"])
    cases = [(MASTER, {"kind": "master", "role": "admin", "name": "master", "keyId": None,
                       "permissions": ["approve", "audit", "create", "kill", "reject", "send"]}),
             (viewer["key"], {"kind": "key", "role": "viewer", "name": "key:victor", "keyId": viewer["id"],
                              "permissions": ["audit"]}),
             (limited["key"], {"kind": "key", "role": "operator", "name": "key:limited", "keyId": limited["id"],
                               "permissions": ["create", "send"]})]
    for token, want in cases:
        r = await d.http.get("/v1/auth/whoami", headers=bearer(token))
        want.update(sessionId=None, authRequired=True, sso=False, strictRbac=False)
        assert r.status_code == 200 and r.json() == want, r.text
        conforms("auth.whoami", r.json())
    assert (await d.http.get("/v1/auth/whoami")).status_code == 401
    local = await daemon_factory(stateDir=str(Path(d.daemon.config.stateDir).parent / "s2"),
                                 socket=str(d.daemon.config.socket_path.parent / "2.sock"))
    assert (await local.http.get("/v1/auth/whoami")).json()["kind"] == "local"


async def test_users_lists_single_sign_on_users(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    pytest.importorskip("jwt", reason="PyJWT not installed (pip install 'aegis-py[oidc]')")
    from .test_oidc import sso_daemon

    d, idp = await sso_daemon(daemon_factory, nursery)
    admin = idp.mint({"sub": "u-9", "email": "root@example.com", "name": "Root", "aegis_role": "admin"})
    ada = idp.mint()  # u-1, operator
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "name": "ada-work", "reuse": False},
                          headers=bearer(ada))
    assert r.status_code == 201
    assert (await d.http.get("/v1/auth/users", headers=bearer(ada))).status_code == 403
    r = await d.http.get("/v1/auth/users", headers=bearer(admin))
    assert r.status_code == 200, r.text
    conforms("auth.users", r.json())
    users = {u["sub"]: u for u in r.json()["ssoUsers"]}
    assert r.json()["oidc"] is True
    assert users["u-1"]["email"] == "ada@example.com" and users["u-1"]["role"] == "operator"
    assert users["u-1"]["principal"] == "oidc:u-1" and users["u-1"]["via"] == ["bearer"]
    assert users["u-1"]["lastSeenAt"] is not None
    assert [s["name"] for s in users["u-1"]["sessions"]] == ["ada-work"] and users["u-1"]["sessionCount"] == 1
    assert users["u-9"]["role"] == "admin" and users["u-9"]["sessionCount"] == 0
    assert ada not in r.text and admin not in r.text
