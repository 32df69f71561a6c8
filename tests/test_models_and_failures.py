"""The model a user asks for reaches the agent through whichever ACP mechanism it offers (or is refused with the
list), and an agent's failure reaches the record, the events and the transcript as one line with the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aegisd.sessions.failures import AGENT, AUTH, MODEL, RATE_LIMIT, classify

from .conftest import DaemonHandle, agent_env


@pytest.fixture(params=["config", "models"])
async def with_models(request: pytest.FixtureRequest, daemon_factory: Any, tmp_path: Path) -> DaemonHandle:
    """A daemon whose fake agent offers default, sonnet and haiku through a `model` config option (as
    claude-agent-acp 0.101 does) or through the unstable `models` field and session/set_model."""
    env = agent_env(tmp_path, FAKE_ACP_MODELS="default,sonnet,haiku", FAKE_ACP_MODEL_API=request.param)
    return await daemon_factory(env=env)  # type: ignore[no-any-return]


async def test_the_model_reaches_the_agent_and_the_record_shows_what_it_reports(with_models: DaemonHandle,
                                                                                  workdir: Path) -> None:
    d = with_models
    s = await d.create(workdir, model="haiku", reuse=False)
    assert s["model"] == "haiku" and s["requestedModel"] == "haiku"
    assert s["models"] == ["default", "sonnet", "haiku"]
    plain = await d.create(workdir, reuse=False)
    assert plain["model"] == "default" and plain["requestedModel"] is None  # what the agent says, not a guess
    named = await d.create(workdir, model="Sonnet", reuse=False)  # the option's display name, any case
    assert named["model"] == "sonnet"
    # and later, on a live session
    r = await d.http.post(f"/v1/sessions/{plain['id']}/model", json={"model": "sonnet"})
    assert r.status_code == 200 and r.json()["model"] == "sonnet"
    assert (await d.http.get(f"/v1/sessions/{plain['id']}")).json()["model"] == "sonnet"
    r = await d.http.post(f"/v1/sessions/{plain['id']}/model", json={"model": "gpt-9"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_MODEL"
    assert "default, sonnet, haiku" in r.json()["message"]


async def test_an_unknown_model_is_refused_with_the_agents_list(with_models: DaemonHandle, workdir: Path) -> None:
    r = await with_models.http.post("/v1/sessions", json={"workDir": str(workdir), "model": "claude-9-ultra",
                                                          "prompt": "say:hi"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "INVALID_MODEL" and body["details"]["models"] == ["default", "sonnet", "haiku"]
    assert "claude-9-ultra" in body["message"] and "default, sonnet, haiku" in body["message"]
    # kept for the record, with the reason
    [rec] = [r for r in with_models.manager.records.values()]
    assert rec.status.value == "crashed" and rec.lastError is not None and rec.lastError.kind == MODEL


async def test_a_model_for_an_agent_that_offers_none_is_refused(daemon: DaemonHandle, workdir: Path) -> None:
    r = await daemon.http.post("/v1/sessions", json={"workDir": str(workdir), "model": "sonnet"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_MODEL"
    assert "offers no way to choose a model" in r.json()["message"]


@pytest.mark.parametrize(("script", "kind", "needle"), [
    ("error:-32000:Authentication required", AUTH, "claude login"),
    ("error:-32603:Internal error: API Error: 429 rate_limit_error", RATE_LIMIT, "wait a minute"),
    ("error:-32603:Internal error: API Error: 404 not_found_error model: claude-x", MODEL, "models the agent offers"),
    ("error:-32603:Internal error: disk on fire", AGENT, "disk on fire"),
])
async def test_a_failed_turn_says_why_and_what_to_do(daemon: DaemonHandle, workdir: Path, script: str, kind: str,
                                                     needle: str) -> None:
    s = await daemon.create(workdir, prompt=script, reuse=False)
    ev = await daemon.wait_event(s["id"], "turn")
    assert ev.data["stopReason"] == "error" and ev.data["errorKind"] == kind and needle in ev.data["error"]
    rec = (await daemon.http.get(f"/v1/sessions/{s['id']}")).json()
    assert rec["lastError"]["kind"] == kind and rec["lastError"]["message"] == ev.data["error"]
    msgs = (await daemon.http.get(f"/v1/sessions/{s['id']}/transcript")).json()["messages"]
    assert any(m["contentType"] == "error" and needle in m["text"] for m in msgs)
    if kind == AUTH:
        assert "ANTHROPIC_API_KEY" in ev.data["error"]
    # a turn that ends well clears it
    after = daemon.daemon.bus.last_id
    await daemon.http.post(f"/v1/sessions/{s['id']}/send", json={"text": "say:fine now"})
    await daemon.wait_event(s["id"], "turn", after_id=after)
    assert (await daemon.http.get(f"/v1/sessions/{s['id']}")).json()["lastError"] is None


async def test_a_missing_agent_says_how_to_install_it(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(agentCommand=["/nonexistent/claude-agent-acp"])
    s = await d.create(workdir, reuse=False)
    assert s["status"] == "crashed"
    assert s["lastError"]["kind"] == "agent_missing" and "make install" in s["lastError"]["message"]


def test_classify_reads_codes_kinds_and_words() -> None:
    assert classify(-32000, "Authentication required") == AUTH
    assert classify(-32603, "Internal error: API Error: 401 invalid x-api-key") == AUTH
    assert classify(-32603, "x", {"errorKind": "rate_limit"}) == RATE_LIMIT
    assert classify(-32603, "Overloaded") == RATE_LIMIT
    assert classify(-32603, "model 'x' not found") == MODEL
    assert classify(-32603, "Query closed before response received") == AGENT
