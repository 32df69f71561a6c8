"""The CLI: click's CliRunner for pure commands, real `ag` subprocesses against a real daemon."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from aegisctl.cli import cli

from .conftest import FAKE_AGENT_CMD, pid_alive, start_daemon_process, wait_dead

AG = str(Path(sys.executable).with_name("ag"))


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"AEGIS_STATE_DIR": str(tmp_path / "state"), "AEGIS_SOCKET": str(tmp_path / "nosock" / "s.sock"),
           "HOME": str(tmp_path), "AEGIS_CONFIG": "", "NO_COLOR": "1"}
    env.update(extra)
    return env


def test_unknown_word_is_refused_with_suggestion(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["lsit"], env=runner_env(tmp_path))
    assert r.exit_code == 2
    assert "Did you mean `ag list`" in r.output
    r = CliRunner().invoke(cli, ["analyze this project"], env=runner_env(tmp_path))
    assert r.exit_code == 2 and "unknown command" in r.output


def test_run_help_shows_its_own_flags(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["run", "--help"])
    assert r.exit_code == 0
    for flag in ("--cwd", "--port", "--no-stream", "--model", "--name", "--yes", "--accept-permissions", "-y",
                 "--agent", "--keep"):
        assert flag in r.output


def test_init_is_idempotent(tmp_path: Path) -> None:
    env = runner_env(tmp_path)
    r = CliRunner().invoke(cli, ["init", "--cwd", str(tmp_path), "--model", "sonnet"], env=env)
    assert r.exit_code == 0, r.output
    cfg = tmp_path / ".aegis" / "config.yaml"
    first = cfg.read_text()
    assert "model: sonnet" in first and "authToken" not in first
    r = CliRunner().invoke(cli, ["init", "--cwd", str(tmp_path)], env=env)
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output
    assert cfg.read_text() == first
    r = CliRunner().invoke(cli, ["init", "--cwd", str(tmp_path), "--force", "--host", "0.0.0.0"], env=env)
    assert r.exit_code == 0 and "Auth token" in r.output
    assert "authToken:" in cfg.read_text() and oct(cfg.stat().st_mode & 0o777) == "0o600"
    from aegisd.config import load_config

    assert load_config(env={}, cwd=tmp_path).host == "0.0.0.0"  # the written file is a valid config


def test_config_show_sources_and_masking(tmp_path: Path) -> None:
    (tmp_path / ".aegis").mkdir()
    (tmp_path / ".aegis" / "config.yaml").write_text("port: 9555\nauthToken: supersecretvalue\nbogusKey: 1\n")
    env = runner_env(tmp_path, AEGIS_LOG_LEVEL="debug")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = CliRunner().invoke(cli, ["config", "show", "--json"], env=env)
    finally:
        os.chdir(old)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    v = data["values"]
    assert v["port"]["value"] == 9555 and v["port"]["source"].startswith("file:")
    assert v["logLevel"] == {"value": "debug", "source": "env:AEGIS_LOG_LEVEL"}
    assert v["host"]["source"] == "default"
    assert "supersecretvalue" not in r.output and v["authToken"]["value"].startswith("su***")
    assert any("bogusKey" in w for w in data["warnings"])


def test_doctor_broken_setup(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    env = runner_env(tmp_path, AEGIS_AGENT_COMMAND="/nonexistent/agent", AEGIS_PORT=str(port))
    try:
        r = CliRunner().invoke(cli, ["doctor", "--json"], env=env)
    finally:
        taken.close()
    assert r.exit_code == 1
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["agent"]["status"] == "fail" and "/nonexistent/agent" in checks["agent"]["detail"]
    assert checks["port"]["status"] == "fail" and checks["port"]["fix"]
    assert checks["python"]["status"] == "ok" and checks["state dir"]["status"] == "ok"


def test_doctor_healthy_setup_exits_zero(tmp_path: Path) -> None:
    env = runner_env(tmp_path, AEGIS_AGENT_COMMAND=" ".join(FAKE_AGENT_CMD), AEGIS_PORT="0",
                     ANTHROPIC_API_KEY="x")
    r = CliRunner().invoke(cli, ["doctor"], env=env)
    assert "[FAIL]" not in r.output, r.output
    assert r.exit_code == 0


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_doctor_checks_the_session_store(tmp_path: Path, kind: str) -> None:
    url_var = {"postgres": "AEGIS_TEST_PG_URL", "redis": "AEGIS_TEST_REDIS_URL"}[kind]
    store_env = {"postgres": "AEGIS_POSTGRES_URL", "redis": "AEGIS_REDIS_URL"}[kind]
    dead = {"postgres": "postgresql://u:pw@127.0.0.1:1/x", "redis": "redis://:pw@127.0.0.1:1/0"}[kind]
    env = runner_env(tmp_path, AEGIS_AGENT_COMMAND=" ".join(FAKE_AGENT_CMD), AEGIS_PORT="0",
                     AEGIS_SESSION_STORE=kind, **{store_env: dead})
    r = CliRunner().invoke(cli, ["doctor", "--json"], env=env)
    check = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["session store"]
    assert r.exit_code == 1 and check["status"] == "fail" and "pw" not in check["detail"], check
    if not os.environ.get(url_var):
        pytest.skip(f"{url_var} not set (a live {kind} to check)")
    env[store_env] = os.environ[url_var]
    r = CliRunner().invoke(cli, ["doctor", "--json"], env=env)
    check = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["session store"]
    assert check["status"] in ("ok", "warn") and ("PostgreSQL" in check["detail"] or "Redis" in check["detail"])


def test_not_running_is_explained(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["list"], env=runner_env(tmp_path, AEGIS_PORT="1"))
    assert r.exit_code == 1
    assert "aegisd is not running" in r.output and "ag serve" in r.output


def test_cli_reference_is_up_to_date() -> None:
    from aegisctl._docs import render_cli_reference

    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    import difflib
    diff = "".join(difflib.unified_diff(doc.read_text().splitlines(True), render_cli_reference().splitlines(True)))
    assert not diff, "docs/cli.md is stale: run `make docs`\n" + diff[:2000]


# ---- against a real daemon -------------------------------------------------------------------------------
async def ag(dp: Any, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**dp.env, "NO_COLOR": "1"}
    with trio.fail_after(timeout):
        r = await trio.run_process([AG, *args], env=env, capture_stdout=True, capture_stderr=True, check=False)
    res = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
    if check:
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{res.stdout}\n{res.stderr}"
    return res


async def wait_for_event(dp: Any, sid: str, name: str, timeout: float = 20) -> dict[str, Any]:
    import contextlib

    from aegisctl.client import Client

    def run() -> dict[str, Any]:
        with contextlib.closing(Client(socket_path=dp.socket).stream("session.follow", id=sid, afterId=0)) as evs:
            for ev in evs:
                if ev["event"] == name:
                    return ev  # type: ignore[no-any-return]
        raise AssertionError(f"no {name} event")
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(run)


async def test_session_verbs(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    r = await ag(dp, "create", "say:first", "--cwd", str(work), "--name", "demo")
    assert "Session created: demo" in r.stdout
    sid = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("ID: "))
    short = sid[:8]
    assert f"ag read {short} --follow" in r.stdout
    r = await ag(dp, "read", short, "--follow")
    assert "first" in r.stdout
    r = await ag(dp, "list")
    assert short in r.stdout and "demo" in r.stdout and "idle" in r.stdout
    data = json.loads((await ag(dp, "list", "--json")).stdout)
    assert data["sessions"][0]["id"] == sid
    r = await ag(dp, "send", short, "tool:execute:Run make:make")
    assert "Delivered" in r.stdout
    # approve through the CLI once the session waits (wait on its approval event)
    await wait_for_event(dp, sid, "approval")
    r = await ag(dp, "approve", short)
    assert "Approved (allow)" in r.stdout
    r = await ag(dp, "approve", short, check=False)
    assert r.returncode == 1 and "NO_PENDING_PERMISSION" in r.stderr
    r = await ag(dp, "read", short, "--all")
    assert "permission: allow" in r.stdout
    r = await ag(dp, "interrupt", short)
    assert "Nothing to interrupt" in r.stdout
    r = await ag(dp, "kill", short)
    assert "Killed" in r.stdout
    r = await ag(dp, "show", short)
    assert "killed" in r.stdout
    r = await ag(dp, "send", "nope-no-such", "x", check=False)
    assert r.returncode == 1 and "not found" in r.stderr
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_ag_run_streams_and_closes(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    r = await ag(dp, "run", "chunks:4:streamed words here;toolauto:read:Read file:a.txt", "--cwd", str(work))
    assert "streamed words here" in r.stdout
    assert "Read file" in r.stderr
    assert (work / ".aegis" / "config.yaml").exists()  # bootstrapped, and never overwritten
    (work / ".aegis" / "config.yaml").write_text("# mine\n")
    r = await ag(dp, "run", "-y", "--yes", "tool:execute:Run rm:rm x", "--cwd", str(work))
    assert "permission: allow" in r.stdout and "Session" not in r.stderr
    assert (work / ".aegis" / "config.yaml").read_text() == "# mine\n"
    sessions = json.loads((await ag(dp, "list", "--json")).stdout)["sessions"]
    assert {s["status"] for s in sessions} == {"completed"}
    r = await ag(dp, "run", "--no-stream", "say:x", "--cwd", str(work))
    assert "ID: " in r.stdout and "Next steps" in r.stdout
    r = await ag(dp, "run", "crash:9", "--cwd", str(work), check=False)
    assert r.returncode == 1 and "exited with code 9" in r.stderr
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def _read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    buf = b""
    with trio.fail_after(timeout):
        while needle not in buf:
            await trio.lowlevel.wait_readable(fd)
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@contextlib.asynccontextmanager
async def ag_on_a_tty(dp: Any, *args: str) -> AsyncIterator[tuple[trio.Process, int]]:
    """`ag` with a pseudo-terminal as stdin/stdout/stderr; yields (process, pty master), reaps both."""
    master, slave = pty.openpty()
    proc = await trio.lowlevel.open_process([AG, *args], stdin=slave, stdout=slave, stderr=slave,
                                            env={**dp.env, "NO_COLOR": "1"})
    os.close(slave)
    try:
        yield proc, master
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_ag_run_permission_prompt_on_a_tty(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    async with ag_on_a_tty(dp, "run", "tool:execute:Deploy:make deploy;say:finished", "--cwd", str(work)) as (
            proc, master):
        out = await _read_until(master, b"[y/N]")
        assert b"Allow Deploy" in out and b"make deploy" in out
        os.write(master, b"y\n")
        out = await _read_until(master, b"finished")
        assert b"permission: allow" in out
        with trio.fail_after(20):
            assert await proc.wait() == 0
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_ag_run_ctrl_c_interrupts_then_kills(nursery: trio.Nursery, tmp_path: Path,
                                                    short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    async with ag_on_a_tty(dp, "run", "say:started;wait-for-cancel", "--cwd", str(work)) as (proc, master):
        await _read_until(master, b"started")
        proc.send_signal(signal.SIGINT)
        out = await _read_until(master, b"turn ended: cancelled")
        assert b"Interrupting" in out
        with trio.fail_after(20):
            assert await proc.wait() == 130
    sessions = json.loads((await ag(dp, "list", "--json")).stdout)["sessions"]
    assert sessions[0]["status"] == "completed"
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_ag_run_starts_the_daemon(tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NO_COLOR": "1",
           "AEGIS_STATE_DIR": str(tmp_path / "state"), "AEGIS_SOCKET": str(short_tmp / "d" / "s.sock"),
           "AEGIS_PORT": "0", "AEGIS_ALLOWED_WORK_DIRS": str(tmp_path),
           "AEGIS_AGENT_COMMAND": " ".join(FAKE_AGENT_CMD), "FAKE_ACP_STATE_DIR": str(tmp_path / "fake")}
    with trio.fail_after(60):
        r = await trio.run_process([AG, "run", "say:hello", "--cwd", str(work)], env=env, capture_stdout=True,
                                   capture_stderr=True, check=False)
    assert r.returncode == 0, r.stderr
    assert b"hello" in r.stdout and b"Starting aegisd in the background" in r.stderr
    from aegisctl.client import Client

    with Client(socket_path=short_tmp / "d" / "s.sock") as c:
        hello = c.call("hello")
    os.kill(hello["pid"], signal.SIGTERM)
    await wait_dead([hello["pid"]], timeout=15)
    assert not pid_alive(hello["pid"])
    assert (tmp_path / "state" / "aegisd.log").exists()


def test_service_install_dry_run(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["service", "install", "--dry-run"], env=runner_env(tmp_path))
    assert r.exit_code == 0
    assert "Type=notify" in r.output and "KillMode=mixed" in r.output and "WatchdogSec=" in r.output
    assert "ExecStart=" in r.output and "%h/.local/bin/aegisd" not in r.output
    assert "systemctl --user enable --now aegisd" in r.output


async def test_ag_without_arguments_serves(tmp_path: Path, short_tmp: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AEGIS_STATE_DIR": str(tmp_path / "st"),
           "AEGIS_SOCKET": str(short_tmp / "x" / "s.sock"), "AEGIS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    proc = await trio.lowlevel.open_process([AG], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(20):
        while b"aegisd.ready" not in buf:
            chunk = await proc.stdout.receive_some(65536)
            assert chunk, buf
            buf += chunk
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        assert await proc.wait() == 0
    await proc.stdout.aclose()


@pytest.mark.real_agent
async def test_ag_run_with_real_claude_agent(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    from .realagent.agents import SKIP_CLAUDE, claude_agent_command, claude_agent_env
    from .realagent.mock_anthropic import MockAnthropic

    cmd = claude_agent_command()
    if cmd is None:
        pytest.skip(SKIP_CLAUDE)
    mock = MockAnthropic()
    url = await nursery.start(mock.serve)
    work = tmp_path / "w"
    work.mkdir()
    agent_env = claude_agent_env(url, tmp_path / "claude-home")
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, timeout=30, extra_env={
        "AEGIS_AGENT_COMMAND": " ".join(cmd), **agent_env})
    r = await ag(dp, "run", "-y", "hello claude TOOL:touch via-ag-run.txt", "--cwd", str(work), timeout=120)
    assert "done:" in r.stdout  # the mocked model's answer after the tool ran
    assert (work / "via-ag-run.txt").exists()  # bypassPermissions applied by the daemon (as root it is not offered)
    assert "Bash" in r.stderr or "touch" in r.stderr  # the tool call summary
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_ag_run_second_ctrl_c_kills(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    # `hang` ignores session/cancel, so only the second Ctrl-C (kill) ends it
    async with ag_on_a_tty(dp, "run", "say:started;hang:60000", "--cwd", str(work)) as (proc, master):
        await _read_until(master, b"started")
        proc.send_signal(signal.SIGINT)
        await _read_until(master, b"Ctrl-C again kills")
        proc.send_signal(signal.SIGINT)
        await _read_until(master, b"Killing the session")
        with trio.fail_after(20):
            assert await proc.wait() == 130
    sessions = json.loads((await ag(dp, "list", "--json")).stdout)["sessions"]
    assert sessions[0]["status"] == "killed"
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_keys_commands_and_doctor_audit(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    r = await ag(dp, "keys", "create", "ci-bot", "--role", "operator", "--json")
    key = json.loads(r.stdout)
    assert key["key"].startswith("aegis_")
    r = await ag(dp, "keys", "list")
    assert "ci-bot" in r.stdout and key["key"] not in r.stdout
    # the key works over HTTP through the CLI (AEGIS_URL + AEGIS_AUTH_TOKEN)
    env_http = {**dp.env, "AEGIS_URL": dp.http_url, "AEGIS_AUTH_TOKEN": key["key"], "NO_COLOR": "1"}
    with trio.fail_after(20):
        res = await trio.run_process([AG, "list", "--json"], env=env_http, capture_stdout=True, check=False)
    assert res.returncode == 0 and json.loads(res.stdout)["sessions"] == []
    r = await ag(dp, "keys", "quota", key["id"])
    assert "has no quotas" in r.stdout
    r = await ag(dp, "keys", "quota", key["id"], "--max-sessions", "2", "--max-spend", "1.5", "--window", "30")
    assert "sessions at once" in r.stdout and "tokens per 30 min" in r.stdout
    q = json.loads((await ag(dp, "keys", "quota", key["id"], "--max-sessions", "0", "--json")).stdout)
    assert q["quotas"] == {"maxSpendPerWindow": 1.5, "quotaWindowMs": 1_800_000} and q["usage"]["activeSessions"] == 0
    r = await ag(dp, "keys", "quota", "no-such-key", check=False)
    assert r.returncode != 0 and "no-such-key" in r.stderr
    r = await ag(dp, "keys", "rotate", key["id"], "--grace", "0")
    assert "New secret" in r.stdout
    with trio.fail_after(20):
        res = await trio.run_process([AG, "list"], env=env_http, capture_stderr=True, check=False)
    assert res.returncode == 1 and b"AEGIS_AUTH_TOKEN" in res.stderr  # 401 explained
    r = await ag(dp, "keys", "revoke", key["id"])
    assert "Revoked" in r.stdout
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
    doctor_env = {**dp.env, "AEGIS_PORT": "0", "ANTHROPIC_API_KEY": "x", "NO_COLOR": "1"}
    with trio.fail_after(30):
        res = await trio.run_process([AG, "doctor", "--json"], env=doctor_env, capture_stdout=True, check=False)
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["audit chain"]["status"] == "ok"
    audit = dp.state_dir / "audit" / "audit.jsonl"
    audit.write_text(audit.read_text().replace("ci-bot", "cj-bot"))
    with trio.fail_after(30):
        res = await trio.run_process([AG, "doctor", "--json"], env=doctor_env, capture_stdout=True, check=False)
    assert res.returncode == 1
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["audit chain"]["status"] == "fail"


def _stub(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


async def test_doctor_fix_installs_into_the_npm_prefix(tmp_path: Path) -> None:
    bin_dir, prefix, log = tmp_path / "bin", tmp_path / "npm-prefix", tmp_path / "npm.log"
    # a stand-in npm: records its arguments and creates the binary where `npm install --prefix` would
    _stub(bin_dir, "npm", f'echo "$@" >> {log}\nmkdir -p "$3/node_modules/.bin"\n'
                          'printf "#!/bin/sh\\n" > "$3/node_modules/.bin/claude-agent-acp"\n'
                          'chmod +x "$3/node_modules/.bin/claude-agent-acp"\n')
    _stub(bin_dir, "node", 'echo v20.20.2\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "AEGIS_NPM_PREFIX": str(prefix),
           "AEGIS_STATE_DIR": str(tmp_path / "st"), "AEGIS_PORT": "0", "NO_COLOR": "1", "ANTHROPIC_API_KEY": "x"}
    with trio.fail_after(30):
        r = await trio.run_process([AG, "doctor", "--fix", "--json"], env=env, capture_stdout=True, check=False)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["fix: install claude-agent-acp"]["status"] == "ok"
    assert log.read_text().split()[:3] == ["install", "--prefix", str(prefix)]
    assert "@agentclientprotocol/claude-agent-acp" in log.read_text()
    assert checks["agent"]["status"] == "ok" and str(prefix) in checks["agent"]["detail"]


async def test_service_install_runs_systemctl(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    _stub(bin_dir, "systemctl", f'echo "$@" >> {log}\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "NO_COLOR": "1"}
    with trio.fail_after(30):
        r = await trio.run_process([AG, "service", "install"], env=env, capture_stdout=True, check=False)
    assert r.returncode == 0, r.stdout
    unit = tmp_path / ".config" / "systemd" / "user" / "aegisd.service"
    text = unit.read_text()
    assert "Type=notify" in text and f"ExecStart={Path(AG).with_name('aegisd')}" in text
    assert log.read_text().splitlines() == ["--user daemon-reload", "--user enable --now aegisd"]
    with trio.fail_after(30):
        r = await trio.run_process([AG, "service", "uninstall"], env=env, capture_stdout=True, check=False)
    assert r.returncode == 0 and not unit.exists()
    assert "--user disable --now aegisd" in log.read_text()


async def test_verify_screenshot_and_alerts_commands(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"AEGIS_BROWSER": shutil.which("true") or "/bin/true"})
    work = tmp_path / "proj"
    work.mkdir()
    (work / "Makefile").write_text("build:\n\t@echo built\ntest:\n\t@echo 'FAILED test_x - boom'; exit 1\n")
    sid = json.loads((await ag(dp, "create", "--cwd", str(work), "--json")).stdout)["id"]
    r = await ag(dp, "verify", sid, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "make test" in r.stdout and "FAILED test_x - boom" in r.stdout and "1 of 2 step(s) failed: test" in r.stdout
    r = await ag(dp, "verify", sid, "--critical-only")
    assert "all 1 step(s) passed: build" in r.stdout
    res = json.loads((await ag(dp, "verify", sid, "--json", check=False)).stdout)
    assert res["ok"] is False and [s["ok"] for s in res["steps"]] == [True, False]
    # the SSRF guard answers before any browser starts
    r = await ag(dp, "screenshot", sid, "http://169.254.169.254/", "-o", str(tmp_path / "x.png"), check=False)
    assert r.returncode == 1 and "link-local" in r.stderr and not (tmp_path / "x.png").exists()
    r = await ag(dp, "channels")
    assert "No notification channels configured" in r.stdout
    r = await ag(dp, "alerts", "stats")
    assert "session_failure" in r.stdout and "0 alert webhook(s)" in r.stdout
    r = await ag(dp, "alerts", "test", check=False)
    assert r.returncode == 1 and "no alert webhooks configured" in r.stdout
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
