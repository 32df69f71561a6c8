"""End to end through aegisd with real ACP agents nobody here wrote: the official Python SDK's example agent,
and claude-agent-acp (Claude Code) running offline against a local mock of the Anthropic API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.states import State

from ..realagent.agents import (
    SKIP_CLAUDE,
    SKIP_SDK,
    claude_agent_command,
    claude_agent_env,
    python_sdk_echo_agent_command,
)
from ..realagent.mock_anthropic import MockAnthropic

pytestmark = pytest.mark.real_agent


async def claude_daemon(daemon_factory: Any, nursery: trio.Nursery, tmp_path: Path,
                        **extra_env: str) -> tuple[Any, MockAnthropic]:
    """A daemon whose `claude` agent is claude-agent-acp talking to a fresh local mock of the Anthropic API."""
    cmd = claude_agent_command()
    if cmd is None:
        pytest.skip(SKIP_CLAUDE)
    mock = MockAnthropic()
    url = await nursery.start(mock.serve)
    env = {**claude_agent_env(url, tmp_path / "claude-home"), **extra_env}
    d = await daemon_factory(agentCommand=[], acpInitTimeoutMs=60_000, agents={"claude": {"command": cmd, "env": env}})
    return d, mock


async def test_python_sdk_echo_agent(daemon_factory: Any, workdir: Path) -> None:
    cmd = python_sdk_echo_agent_command()
    if cmd is None:
        pytest.skip(SKIP_SDK)
    d = await daemon_factory(agentCommand=[], agents={"sdk-echo": {"command": cmd}})
    s = await d.create(workdir, agent="sdk-echo", prompt="hello from aegis")
    assert s["agentInfo"] is None or isinstance(s["agentInfo"], dict)
    ev = await d.wait_event(s["id"], "turn", timeout=30)
    assert ev.data["stopReason"] == "end_turn"
    msgs = (await d.http.get(f"/v1/sessions/{s['id']}/read")).json()["messages"]
    assert any(m["role"] == "assistant" and "hello from aegis" in m["text"] for m in msgs), msgs


async def test_claude_agent_acp_offline(daemon_factory: Any, nursery: trio.Nursery, tmp_path: Path,
                                        workdir: Path) -> None:
    d, _ = await claude_daemon(daemon_factory, nursery, tmp_path)
    s = await d.create(workdir, prompt="say hi", permissionMode="default")
    sid = s["id"]
    assert s["status"] != "crashed", s.get("crash")
    ev = await d.wait_event(sid, "turn", timeout=90)
    assert ev.data["stopReason"] == "end_turn"
    msgs = (await d.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    assert any(m["role"] == "assistant" and "mock reply: say hi" in m["text"] for m in msgs), msgs
    rec = d.manager.records[sid]
    assert rec.agentInfo and "claude" in rec.agentInfo["name"]
    assert rec.currentMode == "default"

    # a tool call that needs permission: surfaced as permission_prompt, approved through the API
    r = await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "please TOOL:touch made-by-agent.txt"})
    assert r.status_code == 200
    await d.wait_status(sid, State.PERMISSION_PROMPT, timeout=90)
    got = (await d.http.get(f"/v1/sessions/{sid}")).json()
    assert got["pendingPermission"]["rawInput"]["command"] == "touch made-by-agent.txt"
    r = await d.http.post(f"/v1/sessions/{sid}/approve")
    assert r.status_code == 200
    opts = {o["optionId"]: o["kind"] for o in got["pendingPermission"]["options"]}
    assert opts[r.json()["optionId"]] == "allow_once"
    ev = await d.wait_event(sid, "turn", timeout=90, match=lambda e: e.data["turn"] == 2)
    assert ev.data["stopReason"] == "end_turn"
    assert (workdir / "made-by-agent.txt").exists()
    msgs = (await d.http.get(f"/v1/sessions/{sid}/transcript?limit=200")).json()["messages"]
    assert any(m["contentType"] == "tool_use" for m in msgs)
    assert any("done:" in m["text"] for m in msgs if m["role"] == "assistant")

    # interrupt while a permission request is open: cancelled, back to idle
    await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "TOOL:touch never.txt"})
    await d.wait_status(sid, State.PERMISSION_PROMPT, timeout=90)
    await d.http.post(f"/v1/sessions/{sid}/interrupt")
    ev = await d.wait_event(sid, "turn", timeout=60, match=lambda e: e.data["turn"] == 3)
    assert ev.data["stopReason"] == "cancelled"
    assert not (workdir / "never.txt").exists()
    pid = rec.pid
    r = await d.http.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200
    from ..conftest import wait_dead
    assert pid is not None
    await wait_dead([pid], timeout=10)


async def test_claude_agent_acp_fork(daemon_factory: Any, nursery: trio.Nursery, tmp_path: Path,
                                     workdir: Path) -> None:
    """claude-agent-acp advertises sessionCapabilities.fork: the fork is a real ACP session/fork, so the
    model sees the source's conversation in the fork's first request although nothing was seeded."""
    d, mock = await claude_daemon(daemon_factory, nursery, tmp_path)
    s = await d.create(workdir, prompt="remember the word aubergine", permissionMode="default")
    ev = await d.wait_event(s["id"], "turn", timeout=90)
    assert ev.data["stopReason"] == "end_turn"
    assert d.manager.records[s["id"]].forkSupported
    r = await d.http.post(f"/v1/sessions/{s['id']}/fork", json={"prompt": "which word?"})
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["forkMethod"] == "acp" and f["seededEntries"] == 0, f
    assert f["acpSessionId"] and f["acpSessionId"] != s["acpSessionId"]
    ev = await d.wait_event(f["id"], "turn", timeout=90)
    assert ev.data["stopReason"] == "end_turn"
    fork_req = [q["body"] for q in mock.requests
                if "which word?" in json.dumps(q["body"].get("messages", []))]
    assert fork_req, "the fork's prompt never reached the model"
    history = json.dumps(fork_req[-1]["messages"])
    assert "remember the word aubergine" in history and "mock reply: remember the word" in history
    msgs = (await d.http.get(f"/v1/sessions/{f['id']}/transcript")).json()["messages"]
    assert msgs[0]["text"] == "which word?"


async def test_claude_drives_aegis_through_mcp(daemon_factory: Any, nursery: trio.Nursery, tmp_path: Path,
                                               workdir: Path) -> None:
    """A Claude Code session given the aegis MCP server (`mcpServers: ["aegis"]`) creates another session
    through it: the agent starts `ag mcp`, the model calls mcp__aegis__create_session, the daemon runs it."""
    # Claude Code defers MCP tools behind its ToolSearch tool (a real model looks them up first); the mock
    # model calls the tool directly, so it must be in the request's tool list
    d, _ = await claude_daemon(daemon_factory, nursery, tmp_path, ENABLE_TOOL_SEARCH="false")
    call = {"workDir": str(workdir), "name": "child-of-claude", "prompt": "hello child"}
    s = await d.create(workdir, mcpServers=["aegis"], permissionMode="bypassPermissions",
                       prompt="MCP:mcp__aegis__create_session " + json.dumps(call))
    assert s["mcpServers"] == ["aegis"]
    ev = await d.wait_event(s["id"], "turn", timeout=90)
    assert ev.data["stopReason"] == "end_turn"
    msgs = (await d.http.get(f"/v1/sessions/{s['id']}/transcript?limit=200")).json()["messages"]
    said = " ".join(m["text"] for m in msgs if m["role"] == "assistant")
    assert "tool not available" not in said, said
    children = [r for r in d.manager.records.values() if r.name == "child-of-claude"]
    assert len(children) == 1, said
    assert children[0].id in said  # the tool's result (the new session) went back to the model
    assert any(m["contentType"] == "tool_use" and "create_session" in m["text"] for m in msgs), msgs


async def test_claude_model_through_its_config_option(daemon_factory: Any, nursery: trio.Nursery, tmp_path: Path,
                                                      workdir: Path) -> None:
    """claude-agent-acp 0.101 offers the model only as a `model` config option: --model must reach it that way,
    and an unknown one is refused with the agent's own list."""
    d, mock = await claude_daemon(daemon_factory, nursery, tmp_path)
    s = await d.create(workdir, model="haiku", prompt="say hi", reuse=False)
    assert s["model"] == "haiku" and "haiku" in s["models"] and "sonnet" in s["models"], s
    await d.wait_event(s["id"], "turn", timeout=90)
    bodies = [r["body"] for r in mock.requests if isinstance(r.get("body"), dict)]
    asked = [b.get("model", "") for b in bodies if b.get("messages")]
    assert asked and "haiku" in asked[-1], asked  # the provider was asked for that model
    r = await d.http.post("/v1/sessions", json={"workDir": str(workdir), "model": "gpt-9", "reuse": False})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_MODEL" and "haiku" in r.json()["message"]


async def test_claude_without_credentials_says_how_to_sign_in(daemon_factory: Any, nursery: trio.Nursery,
                                                              tmp_path: Path, workdir: Path) -> None:
    cmd = claude_agent_command()
    if cmd is None:
        pytest.skip(SKIP_CLAUDE)
    mock = MockAnthropic()
    url = await nursery.start(mock.serve)
    env = claude_agent_env(url, tmp_path / "claude-home")
    del env["ANTHROPIC_API_KEY"]
    d = await daemon_factory(agentCommand=[], acpInitTimeoutMs=60_000, agents={"claude": {"command": cmd, "env": env}})
    s = await d.create(workdir, prompt="say hi", reuse=False)
    ev = await d.wait_event(s["id"], "turn", timeout=90)
    assert ev.data["stopReason"] == "error" and ev.data["errorKind"] == "auth", ev.data
    assert "claude login" in ev.data["error"] and "ANTHROPIC_API_KEY" in ev.data["error"]
