"""An agent is not an admin: the agent and every tool it runs (same uid as the daemon) reach the control socket and
the loopback HTTP port like the user does, and get a principal scoped to their own session. The session's cgroup
holds whatever the tools start, so nothing survives the session or the daemon. See docs/security.md."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aegisd.acp._cgroup import cgroup_of

from .conftest import DaemonHandle, pid_alive, start_daemon_process, wait_dead

ROOT = Path(__file__).resolve().parent
PROBE = str(ROOT / "agent_probe.py")
MCP_PROBE = str(ROOT / "agent_mcp_probe.py")
MASTER = "m" * 40


def sh(cmd: str) -> str:
    return "sh:" + base64.b64encode(cmd.encode()).decode()


def probe_cmd(kind: str, where: str, calls: list[list[Any]]) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, PROBE, kind, where, json.dumps(calls)))


async def run_tool(h: DaemonHandle, sid: str, cmd: str) -> str:
    """Make the session's agent run a shell command as one of its tools; its output."""
    after = h.daemon.bus.last_id
    r = await h.http.post(f"/v1/sessions/{sid}/send", json={"text": sh(cmd)})
    assert r.status_code == 200, r.text
    ev = await h.wait_event(sid, "message", after_id=after, timeout=60,
                            match=lambda e: str(e.data.get("text", "")).startswith("sh["))
    text = str(ev.data["text"])
    assert text.startswith("sh[0]: "), text
    return text[len("sh[0]: "):]


async def probe(h: DaemonHandle, sid: str, kind: str, calls: list[list[Any]]) -> list[dict[str, Any]]:
    where = str(h.daemon.socket_path) if kind == "socket" else h.daemon.http_url
    out = await run_tool(h, sid, probe_cmd(kind, where, calls))
    return json.loads(out)  # type: ignore[no-any-return]


async def idle(h: DaemonHandle, workdir: Path, **body: Any) -> str:
    s = await h.create(workdir, reuse=False, **body)
    await h.wait_status(s["id"], "idle")
    return str(s["id"])


needs_cgroups = pytest.mark.skipif(
    not os.access("/sys/fs/cgroup", os.W_OK) and os.geteuid() != 0,
    reason="per-session cgroups need root or a delegated cgroup (systemd Delegate=yes)")


async def test_agent_on_the_socket_is_scoped_to_its_session(daemon: DaemonHandle, workdir: Path) -> None:
    me = await idle(daemon, workdir, name="agent")
    other = await idle(daemon, workdir, name="someone-else")
    res = await probe(daemon, me, "socket", [
        ["session.list", {}], ["auth.keys.create", {"name": "mine", "role": "admin"}],
        ["session.approve", {"id": me}], ["session.send", {"id": me, "text": "more"}],
        ["session.kill", {"id": me}], ["session.get", {"id": other}], ["session.kill", {"id": other}],
        ["session.get", {"id": me}], ["hello", {}], ["audit.query", {}]])
    listed, key, approve_own, send_own, kill_own, get_other, kill_other, get_me, hello, audit = res
    assert [s["id"] for s in listed["result"]["sessions"]] == [me]
    assert key["code"] == "FORBIDDEN" and not key["ok"]
    for r in (approve_own, send_own, kill_own):
        assert r["status"] == 403 and r["code"] == "SESSION_FORBIDDEN", r
    for r in (get_other, kill_other):
        assert not r["ok"] and r["status"] in (403, 404), r
    assert get_me["ok"] and get_me["result"]["id"] == me and hello["ok"]
    assert audit["code"] == "FORBIDDEN"
    # nothing happened: no key, the other session lives, and the user (the socket, the loopback) still sees all
    assert not daemon.daemon.keys.has_keys()
    assert daemon.manager.records[other].status.value == "idle"
    listing = (await daemon.http.get("/v1/sessions")).json()
    assert {s["id"] for s in listing["sessions"]} == {me, other}


async def test_agent_creates_and_drives_its_own_workers(daemon: DaemonHandle, workdir: Path) -> None:
    me = await idle(daemon, workdir, name="orchestrator")
    other = await idle(daemon, workdir, name="unrelated")
    [made] = await probe(daemon, me, "socket", [["session.create", {
        "workDir": str(workdir), "name": "worker", "prompt": "tool:execute:Run:make", "reuse": False}]])
    assert made["ok"], made
    child = made["result"]["id"]
    assert made["result"]["creatorSessionId"] == me
    await daemon.wait_status(child, "permission_prompt")
    # as the agent's tool: approve the worker, see it, not the unrelated one; end the worker
    listed, approved, killed = await probe(daemon, me, "socket", [
        ["session.list", {}], ["session.approve", {"id": child}], ["session.kill", {"id": child}]])
    assert {s["id"] for s in listed["result"]["sessions"]} == {me, child}
    assert approved["ok"] and killed["ok"], (approved, killed)
    assert daemon.manager.records[child].status.value == "killed"
    assert daemon.manager.records[other].status.value == "idle"
    # the worker's own agent cannot act on its creator (nor on itself)
    worker = await idle(daemon, workdir, name="worker-2")
    daemon.manager.records[worker].creatorSessionId = me
    res = await probe(daemon, worker, "socket", [["session.kill", {"id": me}], ["session.list", {}]])
    assert res[0]["status"] in (403, 404)
    assert [s["id"] for s in res[1]["result"]["sessions"]] == [worker]


async def test_agent_children_are_capped(daemon_factory: Any, workdir: Path) -> None:
    h = await daemon_factory(maxChildSessions=1)
    me = await idle(h, workdir)
    first, second = await probe(h, me, "socket", [
        ["session.create", {"workDir": str(workdir), "reuse": False}],
        ["session.create", {"workDir": str(workdir), "reuse": False}]])
    assert first["ok"]
    assert second["status"] == 429 and second["code"] == "QUOTA_EXCEEDED"


@pytest.mark.parametrize("token", [None, MASTER], ids=["zero-config", "master-token"])
async def test_agent_over_loopback_http_is_scoped_whatever_token_it_shows(daemon_factory: Any, workdir: Path,
                                                                           token: str | None) -> None:
    h = await daemon_factory(**({"authToken": MASTER} if token else {}))
    if token:
        h.http.headers["Authorization"] = f"Bearer {MASTER}"
    me = await idle(h, workdir)
    other = await idle(h, workdir)
    res = await probe(h, me, "http", [
        ["GET", "/v1/sessions", None, token], ["POST", "/v1/auth/keys", {"name": "k", "role": "admin"}, token],
        ["POST", f"/v1/sessions/{me}/approve", None, token], ["DELETE", f"/v1/sessions/{other}", None, token],
        ["GET", f"/v1/sessions/{me}", None, token]])
    listed, key, approve, kill, get = res
    assert [s["id"] for s in listed["result"]["sessions"]] == [me], listed
    assert key["status"] == 403 and approve["status"] == 403 and kill["status"] in (403, 404)
    assert get["ok"]
    assert h.manager.records[other].status.value == "idle"
    r = await h.http.get("/v1/sessions")  # the user, from the same loopback
    assert len(r.json()["sessions"]) == 2


async def test_orchestrator_over_ag_mcp_inside_the_agent(daemon: DaemonHandle, workdir: Path) -> None:
    pytest.importorskip("mcp", reason="the MCP Python SDK is not installed (make install)")
    other = (await daemon.create(workdir, reuse=False, prompt="tool:edit:Edit:secret.txt"))["id"]
    await daemon.wait_status(other, "permission_prompt")  # not the orchestrator's: it must not see it
    me = await idle(daemon, workdir, name="orchestrator")
    cmd = " ".join(shlex.quote(a) for a in (sys.executable, MCP_PROBE, str(daemon.daemon.socket_path),
                                            str(workdir), me))
    out = json.loads(await run_tool(daemon, me, cmd))
    assert not out["create"]["error"], out["create"]
    child = out["create"]["body"]["id"]
    assert daemon.manager.records[child].creatorSessionId == me
    assert out["wait"]["body"]["status"] == "permission_prompt"
    assert out["info"]["body"]["session"] == me
    assert out["whoami"]["body"]["kind"] == "agent" and out["whoami"]["body"]["sessionId"] == me
    assert [(p["sessionId"], p["toolTitle"]) for p in out["pending"]["body"]["pending"]] == [(child, "Run")]
    assert not out["approveChild"]["error"], out["approveChild"]
    assert out["approveOwn"]["error"] and out["approveOwn"]["body"]["code"] == "SESSION_FORBIDDEN"
    assert out["modeChild"]["body"]["permissionMode"] == "acceptEdits", out["modeChild"]
    assert out["modeOwn"]["error"] and out["modeOwn"]["body"]["code"] == "SESSION_FORBIDDEN"
    assert daemon.manager.records[me].permissionMode == "default"
    assert {s["id"] for s in out["list"]["body"]["sessions"]} == {me, child}
    seen = {e["sessionId"] for e in out["events"]["body"]["events"]}
    assert child in seen and other not in seen and seen <= {me, child}


async def test_without_cgroups_callers_are_traced_by_ancestry(daemon_factory: Any, workdir: Path) -> None:
    h = await daemon_factory(sessionCgroups=False)
    assert h.daemon.cgroups is None
    me = await idle(h, workdir)
    await idle(h, workdir)
    [sock] = await probe(h, me, "socket", [["session.list", {}]])
    [web] = await probe(h, me, "http", [["GET", "/v1/sessions", None, None]])
    assert [s["id"] for s in sock["result"]["sessions"]] == [me]
    assert [s["id"] for s in web["result"]["sessions"]] == [me]


@needs_cgroups
async def test_a_detached_tool_with_an_empty_environment_is_still_the_agent(daemon: DaemonHandle, workdir: Path,
                                                                            tmp_path: Path) -> None:
    assert daemon.daemon.cgroups is not None
    me = await idle(daemon, workdir)
    await idle(daemon, workdir)
    out = tmp_path / "escaped.json"
    for kind, where in (("socket", str(daemon.daemon.socket_path)), ("http", daemon.daemon.http_url)):
        calls: list[list[Any]] = [["session.list", {}]] if kind == "socket" else [["GET", "/v1/sessions", None, None]]
        # setsid + a double fork + env -i: no process group, no parent, no marker left; only the cgroup
        await run_tool(daemon, me, f"( setsid env -i {probe_cmd(kind, where, calls)} > {out}.tmp 2>&1; "
                                   f"mv {out}.tmp {out} & ) ; echo started")
        with trio.fail_after(20):
            while not out.exists():  # another process's output file: no event to wait on
                await trio.sleep(0.02)
        [res] = json.loads(out.read_text())
        out.unlink()
        assert [s["id"] for s in res["result"]["sessions"]] == [me], (kind, res)


@needs_cgroups
async def test_the_session_cgroup_kills_escapees_when_the_session_ends(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="escape", reuse=False)
    ev = await daemon.wait_event(s["id"], "message", match=lambda e: str(e.data.get("text", "")).startswith("escaped"))
    pid = int(str(ev.data["text"]).split(":")[1])
    assert pid_alive(pid) and cgroup_of(pid) == f"{daemon.daemon.cgroups.relative}/{s['id']}"  # type: ignore[union-attr]
    r = await daemon.http.delete(f"/v1/sessions/{s['id']}")
    assert r.status_code == 200
    await wait_dead([pid])
    # DELETE answers before the stop sequence ends; the cgroup goes once the kernel says it is empty (no event to
    # wait on: its removal is polled, with a bound)
    cgroup = daemon.daemon.cgroups.path(s["id"])  # type: ignore[union-attr]
    with trio.fail_after(10):
        while cgroup.exists():
            await trio.sleep(0.01)


@needs_cgroups
async def test_escapees_die_with_a_sigkilled_daemon(tmp_path: Path, short_tmp: Path, workdir: Path,
                                                    nursery: trio.Nursery) -> None:
    pid_file = tmp_path / "pids"
    d = await start_daemon_process(tmp_path, short_tmp, extra_env={"FAKE_ACP_PID_FILE": str(pid_file)},
                                   nursery=nursery)
    async with httpx.AsyncClient(base_url=d.http_url, timeout=20) as http:
        r = await http.post("/v1/sessions", json={"workDir": str(workdir), "prompt": "escape"})
        assert r.status_code == 201, r.text
        with trio.fail_after(20):
            while not pid_file.exists() or not pid_file.read_text().strip():  # written by the agent
                await trio.sleep(0.02)
    pid = int(pid_file.read_text().split()[0])
    assert pid_alive(pid) and cgroup_of(pid) is not None and "/aegis-" in cgroup_of(pid)  # type: ignore[operator]
    os.kill(d.proc.pid, signal.SIGKILL)
    await d.proc.wait()
    await wait_dead([pid], timeout=20)


async def test_workdirs_never_hold_the_daemons_state_or_secrets(daemon_factory: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    for d in (".ssh", ".aws/profiles", ".config/gcloud", "project"):
        (home / d).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    h = await daemon_factory(allowedWorkDirs=[str(tmp_path)])
    state = h.daemon.config.state_path
    (state / "sub").mkdir()
    for wd in (tmp_path, state, state / "sub", home / ".ssh", home / ".aws" / "profiles", home / ".config/gcloud"):
        r = await h.http.post("/v1/sessions", json={"workDir": str(wd)})
        assert r.status_code == 400 and r.json()["code"] == "INVALID_WORKDIR", (wd, r.text)
    r = await h.http.post("/v1/sessions", json={"workDir": str(home / "project")})
    assert r.status_code == 201, r.text



@needs_cgroups
async def test_daemons_on_one_machine_keep_each_others_cgroups() -> None:
    from aegisd.acp._cgroup import SessionCgroups

    first = SessionCgroups.create("a" * 24)
    assert first is not None
    try:
        second = SessionCgroups.create("b" * 24)  # another daemon starting: the first's empty subtree stays
        assert second is not None and first.root.exists()
        gone = await trio.lowlevel.open_process(["true"])
        await gone.wait()
        stale = first.root.parent / f"aegis-{gone.pid}-cccccccc"  # a daemon that died with its reaper
        stale.mkdir()
        third = SessionCgroups.create("d" * 24)
        assert third is not None and not stale.exists() and first.root.exists() and second.root.exists()
        for c in (second, third):
            await c.close()
    finally:
        await first.close()
