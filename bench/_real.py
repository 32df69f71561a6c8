"""`make bench` section `real`: the real Claude agent (claude-agent-acp, which starts a Claude Code child) running
offline against the local mock of the Anthropic API (tests/realagent/mock_anthropic.py), through aegisd vs driven
by a bare ACP client, interleaved in the same run:

  create      `session.create` -> ready (idle)  vs  spawn + initialize + session/new + session/set_mode
  first reply `session.create` with a prompt -> its turn ends  vs  the same plus session/prompt

The bare client starts the agent with exactly what aegisd gives it (the allow-listed environment plus the
agent's configured variables), in its own process group, and stops it by signalling the group, like aegisd.
Skipped when the adapter is not installed (`make agents`)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from run import ROOT, Daemon, acp_request, cpu_seconds, interleave, show  # bench/run.py

sys.path.insert(0, str(ROOT))
from aegisd.acp import agent_environment  # noqa: E402
from tests.realagent.agents import claude_agent_command, claude_agent_env  # noqa: E402

MODE = "default"  # the permission mode both ask for (claude-agent-acp 0.101 starts in its own `auto`)


class BareClient:
    """A minimal ACP client: one request at a time, notifications skipped, no fs/terminal capabilities."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  cwd=str(cwd), env=env, start_new_session=True)
        self.n = 0

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        msg = acp_request(self.p, self.n, method, params)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return dict(msg["result"] or {})

    def start(self, cwd: Path) -> str:
        self.call("initialize", {"protocolVersion": 1, "clientCapabilities": {
            "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False},
            "clientInfo": {"name": "bare", "version": "0"}})
        new = self.call("session/new", {"cwd": str(cwd), "mcpServers": []})
        sid = str(new["sessionId"])
        if (new.get("modes") or {}).get("currentModeId") not in (None, MODE):
            self.call("session/set_mode", {"sessionId": sid, "modeId": MODE})
        return sid

    def close(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.p.wait()
        group_gone(self.p.pid)


def group_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until no process of the group is left (untimed: an agent still stopping takes CPU from the next
    round, so every round starts with none)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.02)


def bench_real(tmp: Path, rounds: int) -> dict[str, Any]:
    cmd = claude_agent_command()
    if cmd is None:
        print("  real: skipped (claude-agent-acp not installed: `make agents`)", flush=True)
        return {"skipped": "claude-agent-acp not installed"}
    mock = subprocess.Popen([sys.executable, "-m", "tests.realagent.mock_anthropic", "--port", "0"], cwd=str(ROOT),
                            stdout=subprocess.PIPE, text=True)
    assert mock.stdout is not None
    url = mock.stdout.readline().strip()
    agent_env = claude_agent_env(url, tmp / "claude-home")
    conf = tmp / "conf" / "config.json"  # its directory is closed to sessions' workDirs
    conf.parent.mkdir()
    conf.write_text(json.dumps({"acpInitTimeoutMs": 60000,
                                                    "agents": {"real": {"command": cmd, "env": agent_env}}}))
    d = Daemon(tmp, {"AEGIS_CONFIG": str(conf)})
    try:
        c = d.client()
        # what aegisd's environment gives the agent (no markers: the bare client sweeps nothing)
        bare_env = agent_environment(
            {"PATH": os.environ["PATH"], "HOME": str(tmp)}, extra=agent_env, markers={})
        out: dict[str, Any] = {}
        deletes: list[float] = []  # DELETE /v1/sessions/{id} of a live real agent: answered before it has stopped
        daemon_cpu: list[float] = []  # the daemon's own CPU from session.create to idle (no prompt)

        def bare_create(prompt: str | None) -> float:
            t0 = time.perf_counter()
            b = BareClient(cmd, bare_env, d.work)
            try:
                sid = b.start(d.work)
                if prompt:
                    b.call("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": prompt}]})
                return time.perf_counter() - t0
            finally:
                b.close()

        def via(prompt: str | None) -> float:
            cpu0 = cpu_seconds(d.proc.pid)
            t0 = time.perf_counter()
            params: dict[str, Any] = {"workDir": str(d.work), "reuse": False, "agent": "real",
                                      "permissionMode": MODE}
            if prompt:
                params["prompt"] = prompt
            s = c.call("session.create", **params)
            if s.get("status") == "crashed":
                raise RuntimeError(f"create crashed: {s}")
            if prompt:
                for ev in c.stream("session.follow", id=s["id"], untilIdle=True):
                    if ev["event"] == "turn":
                        break
            elapsed = time.perf_counter() - t0
            if not prompt:
                daemon_cpu.append(cpu_seconds(d.proc.pid) - cpu0)
            pid = c.call("session.get", id=s["id"])["pid"]
            conn = http.client.HTTPConnection(d.host, d.port, timeout=30)
            t1 = time.perf_counter()
            conn.request("DELETE", f"/v1/sessions/{s['id']}")
            status = conn.getresponse().status
            deletes.append(time.perf_counter() - t1)
            conn.close()
            assert status == 200, status
            group_gone(pid)
            return elapsed

        bare_create(None)  # warm the page cache and Claude Code's first-run files for both
        via(None)
        for name, prompt in (("create", None), ("first_reply", "say hi")):
            pairs = interleave(rounds, lambda p=prompt: bare_create(p), lambda p=prompt: via(p))
            ms = sorted(m for _, m in pairs)[len(pairs) // 2] * 1000
            bs = sorted(b for b, _ in pairs)[len(pairs) // 2] * 1000
            label = "create -> idle" if prompt is None else "create + prompt -> reply"
            out[name] = show(f"real claude: {label}", "aegisd / bare ACP client", [m / b for b, m in pairs],
                             f"(aegisd {ms:.0f} ms, bare {bs:.0f} ms)")
        # what of a create is the daemon's own work, whatever the agent's start-up does to the ratio above
        cs = sorted(daemon_cpu[1:])  # the warm-up's first create left out
        out["create_daemon_cpu_ms"] = {"median": cs[len(cs) // 2] * 1000, "max": cs[-1] * 1000}
        print(f"  {'real claude: daemon CPU per create':<34} {'absolute, ms (tick: 10 ms)':<28} median "
              f"{cs[len(cs) // 2] * 1000:.0f} ms  max {cs[-1] * 1000:.0f} ms", flush=True)
        ds = sorted(deletes)
        out["delete_ms"] = {"median": ds[len(ds) // 2] * 1000, "max": ds[-1] * 1000, "n": len(ds)}
        print(f"  {'real claude: DELETE answered':<34} {'absolute (target 100 ms)':<28} median "
              f"{out['delete_ms']['median']:.1f} ms  max {out['delete_ms']['max']:.1f} ms  ({len(ds)} deletes)",
              flush=True)
        return out
    finally:
        d.stop()
        mock.terminate()
        mock.wait(10)
