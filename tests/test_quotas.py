"""Per-key quotas (concurrent sessions; tokens and estimated spend per window) and GET
/v1/analytics/rate-limits, over real HTTP. The fake agent reports 15 tokens per turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import DaemonHandle
from .test_auth import MASTER, bearer, make_key


@pytest.fixture
async def authd(daemon_factory: Any) -> DaemonHandle:
    return await daemon_factory(authToken=MASTER)  # type: ignore[no-any-return]


async def put_quotas(d: DaemonHandle, key_id: str, **body: Any) -> Any:
    return await d.http.put(f"/v1/auth/keys/{key_id}/quotas", json=body, headers=bearer(MASTER))


async def test_quotas_are_enforced_and_reported(authd: DaemonHandle, workdir: Path) -> None:
    d = authd
    k = await make_key(d, "operator", "ci")
    me = bearer(k["key"])
    r = await put_quotas(d, k["id"], maxConcurrentSessions=1, maxTokensPerWindow=20)
    assert r.status_code == 200 and r.json()["quotas"] == {"maxConcurrentSessions": 1, "maxTokensPerWindow": 20,
                                                           "quotaWindowMs": 3_600_000}
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "say:one"}, headers=me)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    await d.wait_event(sid, "turn")

    # a second session would be one too many
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False}, headers=me)
    assert r.status_code == 429 and r.json()["code"] == "QUOTA_EXCEEDED"
    assert r.json()["details"]["quota"] == "maxConcurrentSessions"
    assert r.json()["details"]["usage"]["activeSessions"] == 1
    # others are not limited by this key's quota
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False}, headers=bearer(MASTER))
    assert r.status_code == 201

    # 15 tokens used of 20: one more prompt goes; at 30 the next one is refused, with when to retry
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:two"}, headers=me)
    assert r.status_code == 200, r.text
    await d.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 2)
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:three"}, headers=me)
    assert r.status_code == 429 and r.json()["details"]["quota"] == "maxTokensPerWindow"
    assert r.json()["details"]["usage"]["tokensInWindow"] == 30
    assert 3000 <= int(r.headers["Retry-After"]) <= 3600
    # the quota follows the session's owner, whoever sends: the master token cannot spend the key's budget
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:three"}, headers=bearer(MASTER))
    assert r.status_code == 429

    got = (await d.http.get(f"/v1/auth/keys/{k['id']}/quotas", headers=bearer(MASTER))).json()
    assert got["usage"]["tokensInWindow"] == 30 and got["usage"]["activeSessions"] == 1

    audit = (await d.http.get("/v1/audit?action=session.quota.rejected", headers=bearer(MASTER))).json()
    quotas_hit = [r["detail"]["quota"] for r in audit["records"]]
    assert quotas_hit == ["maxConcurrentSessions", "maxTokensPerWindow", "maxTokensPerWindow"]

    rl = (await d.http.get("/v1/analytics/rate-limits", headers=bearer(MASTER))).json()
    row = next(x for x in rl["perKey"] if x["keyId"] == k["id"])
    assert row["maxSessions"] == 1 and row["activeSessions"] == 1 and row["tokensInWindow"] == 30
    assert row["maxTokens"] == 20 and row["requestsInLastMinute"] == 4  # two creates, two sends
    assert rl["forecast"] == {"estimatedSessionsRemaining": 0, "bottleneck": "concurrent_sessions"}
    assert rl["quotaRejections"] == 3 and rl["global"]["timeWindowMs"] == 60_000

    # null removes one quota, the rest stay
    r = await put_quotas(d, k["id"], maxTokensPerWindow=None)
    assert r.json()["quotas"] == {"maxConcurrentSessions": 1, "quotaWindowMs": 3_600_000}
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:three"}, headers=me)
    assert r.status_code == 200
    await d.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 3)
    # ending its session frees the key's slot
    assert (await d.http.delete(f"/v1/sessions/{sid}", headers=me)).status_code == 200
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False}, headers=me)
    assert r.status_code == 201
    r = await put_quotas(d, k["id"], clear=True)
    assert r.json()["quotas"] is None


async def test_spend_quota_and_forecast(authd: DaemonHandle, workdir: Path) -> None:
    d = authd
    k = await make_key(d, "operator", "spender")
    me = bearer(k["key"])
    await put_quotas(d, k["id"], maxSpendPerWindow=0.0002, quotaWindowMs=600_000)
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "say:one"}, headers=me)
    sid = r.json()["id"]
    await d.wait_event(sid, "turn")
    rl = (await d.http.get("/v1/analytics/rate-limits", headers=me)).json()
    # one session cost $0.000105 of $0.0002: there is room for no other whole session's worth
    assert rl["forecast"] == {"estimatedSessionsRemaining": 0, "bottleneck": "spend_per_window"}
    assert [x["keyId"] for x in rl["perKey"]] == [k["id"]]  # a non-admin sees only its own key
    await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:two"}, headers=me)
    await d.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 2)
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "say:three"}, headers=me)
    assert r.status_code == 429 and r.json()["details"]["quota"] == "maxSpendPerWindow"
    assert "0.0002" in r.json()["error"] and "10 min" in r.json()["error"]


async def test_quota_bad_input(authd: DaemonHandle) -> None:
    d = authd
    k = await make_key(d, "operator", "x")
    viewer = await make_key(d, "viewer", "v")
    for body in ({"maxConcurrentSessions": 0}, {"maxTokensPerWindow": "many"}, {"quotaWindowMs": 1},
                 {"maxSpendPerWindow": -1}, {"perDay": 5}):
        r = await put_quotas(d, k["id"], **body)
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", (body, r.text)
    assert (await put_quotas(d, "nope", maxConcurrentSessions=1)).status_code == 404
    r = await d.http.put(f"/v1/auth/keys/{k['id']}/quotas", json={"maxConcurrentSessions": 1},
                         headers=bearer(viewer["key"]))
    assert r.status_code == 403
    r = await d.http.get(f"/v1/auth/keys/{k['id']}/quotas", headers=bearer(k["key"]))
    assert r.status_code == 403
    assert (await d.http.get(f"/v1/auth/keys/{k['id']}/quotas", headers=bearer(MASTER))).json()["quotas"] is None


async def test_ip_rate_limit_is_configurable(daemon_factory: Any) -> None:
    d = await daemon_factory(ipRateLimit=5)
    codes = [(await d.http.get("/v1/sessions")).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    r = await d.http.get("/v1/sessions")
    assert r.json()["code"] == "RATE_LIMITED" and "5 requests per minute per IP" in r.json()["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    d.shutdown.set()
    with trio.fail_after(15):
        await d.done.wait()  # type: ignore[attr-defined]
    d2 = await daemon_factory(ipRateLimit=0)  # none at all: a busy local dashboard, a benchmark
    assert {(await d2.http.get("/v1/sessions")).status_code for _ in range(50)} == {200}
    assert (await d2.http.get("/v1/analytics/rate-limits")).json()["global"]["max"] is None
