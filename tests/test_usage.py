"""Metering and analytics over real HTTP: one usage record per turn from the agent's ACP usage, kept across
restarts, summed by period, key, model, day; roles; bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.features.metering import estimate_cost

from .conftest import agent_env
from .test_auth import MASTER, bearer, make_key

OPUS = estimate_cost("claude-opus-4", 10, 5)  # the fake agent reports 10 input and 5 output tokens a turn
SONNET = estimate_cost(None, 10, 5)


async def test_usage_and_analytics(daemon_factory: Any, workdir: Path, tmp_path: Path) -> None:
    d = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODELS="default,claude-opus-4"))
    h = d.http
    a = await d.create(workdir, prompt="say:one", model="claude-opus-4", reuse=False)
    b = await d.create(workdir, prompt="say:two", reuse=False)
    await d.wait_event(a["id"], "turn")
    await d.wait_event(b["id"], "turn")
    await h.post(f"/v1/sessions/{a['id']}/send", json={"text": "say:three"})
    await d.wait_event(a["id"], "turn", match=lambda e: e.data["turn"] == 2)

    u = (await h.get("/v1/usage")).json()
    assert (u["schema_version"], u["turns"], u["sessions"], u["inputTokens"], u["outputTokens"]) == (1, 3, 2, 30, 15)
    assert abs(u["estimatedCostUsd"] - (2 * OPUS + SONNET)) < 1e-9
    assert {t["tier"] for t in u["rate_tiers"]} == {"haiku", "sonnet", "opus"}
    per = (await h.get(f"/v1/usage/sessions/{a['id'][:8]}")).json()
    assert per["total_records"] == 2 and per["records"][0]["model"] == "claude-opus-4"
    by_model = (await h.get("/v1/metrics/aggregate?groupBy=model")).json()
    assert {x["bucket"]: x["turns"] for x in by_model["buckets"]} == {"claude-opus-4": 2, "default": 1}
    by_day = (await h.get("/v1/metrics/aggregate")).json()
    assert by_day["groupBy"] == "day" and len(by_day["buckets"]) == 1 and by_day["totals"]["turns"] == 3
    future = (await h.get("/v1/usage?from=2999-01-01")).json()
    assert future["turns"] == 0 and future["from"] == "2999-01-01T00:00:00Z"
    costs = (await h.get("/v1/analytics/costs")).json()
    assert abs(costs["byModel"]["opus"] - 2 * OPUS) < 1e-9 and costs["totalSessions"] == 2
    assert len(costs["dailyTrends"]) == 1
    tokens = (await h.get("/v1/analytics/tokens")).json()
    assert tokens["totals"]["totalTokens"] == 45 and tokens["byModel"]["sonnet"]["turns"] == 1
    summary = (await h.get("/v1/analytics/summary")).json()
    assert summary["sessions"]["active"] == 2 and summary["usage"]["turns"] == 3
    assert (await h.get("/v1/usage/tiers")).json()["tiers"][0]["tier"] == "haiku"
    assert (await h.get("/v2/")).json()["v1_base"] == "/v1"
    for bad in ("/v1/usage?from=yesterday", "/v1/usage?from=2026-02-01&to=2026-01-01",
                "/v1/metrics/aggregate?groupBy=week", "/v1/usage?extra=1"):
        r = await h.get(bad)
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", bad
    assert (await h.get("/v1/usage/sessions/nope")).status_code == 404

    # the ledger survives a restart
    d.shutdown.set()
    with trio.fail_after(15):
        await d.done.wait()  # type: ignore[attr-defined]
    d2 = await daemon_factory()
    assert (await d2.http.get("/v1/usage")).json()["turns"] == 3


async def test_usage_roles_and_keys(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(authToken=MASTER)
    h = d.http
    op_key = await make_key(d, "operator", "ci")
    viewer = await make_key(d, "viewer", "watcher")
    r = await h.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "say:hi"}, headers=bearer(op_key["key"]))
    sid = r.json()["id"]
    await d.wait_event(sid, "turn")
    by_key = (await h.get("/v1/usage/by-key", headers=bearer(MASTER))).json()
    assert by_key["total_keys"] == 1 and by_key["keys"][0]["keyId"] == op_key["id"]
    assert by_key["keys"][0]["keyName"] == "ci" and by_key["keys"][0]["turns"] == 1
    assert (await h.get("/v1/usage", headers=bearer(op_key["key"]))).json()["turns"] == 1
    assert (await h.get("/v1/usage/by-key", headers=bearer(op_key["key"]))).status_code == 403
    for path in ("/v1/usage", "/v1/metrics/aggregate"):
        r = await h.get(path, headers=bearer(viewer["key"]))
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN", path
    # a viewer's analytics cover only its own sessions: none
    assert (await h.get("/v1/analytics/tokens", headers=bearer(viewer["key"]))).json()["totals"]["turns"] == 0
    assert (await h.get(f"/v1/usage/sessions/{sid}", headers=bearer(viewer["key"]))).status_code == 403
    assert (await h.get("/v1/usage", headers=bearer(MASTER), params={"keyId": op_key["id"]})).json()["turns"] == 1


@pytest.mark.parametrize("reported", [None, "0.0125"], ids=["estimated", "agent-reported"])
async def test_the_session_the_ledger_and_the_reports_agree_on_cost(daemon_factory: Any, workdir: Path,
                                                                     tmp_path: Path, reported: str | None) -> None:
    extra = {"FAKE_ACP_COST_PER_TURN": reported} if reported else {}
    d = await daemon_factory(env=agent_env(tmp_path, **extra))
    s = await d.create(workdir, prompt="say:one", reuse=False)
    await d.wait_event(s["id"], "turn")
    after = d.daemon.bus.last_id
    await d.http.post(f"/v1/sessions/{s['id']}/send", json={"text": "say:two"})
    await d.wait_event(s["id"], "turn", after_id=after)
    want = 2 * float(reported) if reported else 2 * estimate_cost(None, 10, 5)
    session = (await d.http.get(f"/v1/sessions/{s['id']}")).json()["tokenUsage"]["costUsd"]
    metrics = (await d.http.get(f"/v1/sessions/{s['id']}/metrics")).json()["tokenUsage"]["estimatedCostUsd"]
    ledger = (await d.http.get("/v1/usage")).json()["estimatedCostUsd"]
    per_session = sum(r["costUsd"] for r in (await d.http.get(f"/v1/usage/sessions/{s['id']}")).json()["records"])
    costs = (await d.http.get("/v1/analytics/costs")).json()["totalCostUsd"]
    for figure in (session, metrics, ledger, per_session, costs):
        assert abs(figure - want) < 1e-9, (session, metrics, ledger, per_session, costs, want)
