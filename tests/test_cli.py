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
    from aegisd.core.config import load_config

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
    await wait_for_event(dp, sid, "permission.requested")
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
    audit = dp.state_dir / "logs" / "audit.jsonl"  # the file store's audit log
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


# ---- the first hour of a new user (issue 11) ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _tty_output(proc: trio.Process, master: int, timeout: float = 30) -> tuple[int, str]:
    """Everything `ag` writes to its terminal until it exits, and its exit code."""
    buf = b""
    with trio.fail_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(master)
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed (the process exited)
                break
            if not chunk:
                break
            buf += chunk
        code = await proc.wait()
    return code, buf.decode(errors="replace").replace("\r\n", "\n")


def _sid(stdout: str) -> str:
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("ID: "))


async def test_ag_run_says_why_the_turn_failed_on_a_tty(nursery: trio.Nursery, tmp_path: Path,
                                                       short_tmp: Path) -> None:
    """An agent that refuses the prompt (no Claude credentials) or cannot start: `ag run` prints the session's
    lastError line, with the fix, and exits 1; `ag show` shows it with the models the agent reports and offers."""
    work = tmp_path / "w"
    work.mkdir()
    cfg = tmp_path / "cfg" / "aegis.yaml"  # the config's directory is never a workDir
    cfg.parent.mkdir()
    cfg.write_text("agents:\n  missing:\n    command: [/nonexistent/agent-acp]\n")
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env={
        "AEGIS_CONFIG": str(cfg), "FAKE_ACP_MODELS": "default,sonnet,haiku"})
    async with ag_on_a_tty(dp, "run", "--keep", "--model", "sonnet", "error:-32000:Authentication required",
                           "--cwd", str(work)) as (proc, master):
        code, text = await _tty_output(proc, master)
    assert code == 1, text
    assert "turn ended: error" not in text
    assert "error: the agent is not signed in to its model provider (Authentication required)" in text
    assert "claude login" in text and "ANTHROPIC_API_KEY" in text
    sid = json.loads((await ag(dp, "list", "--json")).stdout)["sessions"][0]["id"]
    r = await ag(dp, "show", sid[:8])
    fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
              if ":" in line}
    assert fields["model"] == "sonnet"  # what the agent reports
    assert fields["models offered"] == "default, sonnet, haiku"
    assert fields["last error"].startswith("the agent is not signed in") and "claude login" in fields["last error"]
    # an agent that is not installed: the crash reason and the fix
    async with ag_on_a_tty(dp, "run", "--agent", "missing", "say:x", "--cwd", str(work)) as (proc, master):
        code, text = await _tty_output(proc, master)
    assert code == 1, text
    assert "the agent failed to start" in text and "/nonexistent/agent-acp" in text
    assert "the agent could not be started" in text and "check the command of agent 'missing'" in text
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_an_empty_prompt_is_a_usage_error(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    for args in (["run", ""], ["run", "  \n "], ["create", ""], ["create", "   "]):
        r = await ag(dp, *args, "--cwd", str(work), check=False, timeout=15)  # `ag run ""` used to wait forever
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "the prompt is empty: tell the agent what to do" in r.stderr
    assert json.loads((await ag(dp, "list", "--json")).stdout)["sessions"] == []
    assert not (work / ".aegis").exists()
    r = await ag(dp, "create", "--cwd", str(work))  # no PROMPT at all: a session that waits for `ag send`
    assert "Session created: session-" in r.stdout
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_cli_reuses_an_idle_session_only_when_asked(nursery: trio.Nursery, tmp_path: Path,
                                                          short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    r = await ag(dp, "run", "--keep", "say:first answer", "--cwd", str(work))
    first = json.loads((await ag(dp, "list", "--json")).stdout)["sessions"][0]["id"]
    r = await ag(dp, "create", "say:second answer", "--cwd", str(work))  # idle one there, but not asked to reuse
    second = _sid(r.stdout)
    assert "Session created" in r.stdout and second != first
    r = await ag(dp, "run", "--keep", "--reuse", "say:third answer", "--cwd", str(work))
    # the newest idle one, and only this prompt's turn is streamed
    assert "third answer" in r.stdout and "first answer" not in r.stdout and "second answer" not in r.stdout
    assert f"Reusing idle session {second[:8]}" in r.stderr
    r = await ag(dp, "create", "--reuse", "say:fourth answer", "--cwd", str(work))
    assert "Reused idle session" in r.stdout and _sid(r.stdout) in (first, second)
    sessions = json.loads((await ag(dp, "list", "--json")).stdout)["sessions"]
    assert len(sessions) == 2
    created = json.loads((await ag(dp, "create", "--json", "say:x", "--cwd", str(work))).stdout)
    assert created["reused"] is False
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


@pytest.mark.parametrize("surface", ["socket", "http"])
async def test_ag_stop_asks_the_daemon_and_waits(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path,
                                                 surface: str) -> None:
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    if surface == "http":
        dp.env["AEGIS_URL"] = dp.http_url
    work = tmp_path / "w"
    work.mkdir()
    await ag(dp, "create", "say:hi", "--cwd", str(work))
    pid = dp.proc.pid
    r = await ag(dp, "stop")
    assert f"Stopped aegisd (pid {pid}" in r.stdout
    assert not pid_alive(pid)  # `ag stop` returned only once it was gone
    with trio.fail_after(5):
        assert await dp.proc.wait() == 0  # a clean stop, as SIGTERM gives
    audit = [json.loads(line)["data"] for line in (dp.state_dir / "logs" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "daemon.stop" and audit[-1]["actor"] == "local"
    r = await ag(dp, "stop", check=False)
    assert r.returncode == 1 and "no daemon running" in r.stderr


async def test_ag_stop_goes_through_systemd_for_the_unit(nursery: trio.Nursery, tmp_path: Path,
                                                         short_tmp: Path) -> None:
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    unit = tmp_path / ".config" / "systemd" / "user" / "aegisd.service"  # HOME is tmp_path
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    # a stand-in systemctl whose unit runs our daemon: `show` gives its pid, `stop` stops it
    _stub(bin_dir, "systemctl", f'echo "$@" >> {log}\ncase "$*" in\n  *show*) echo {dp.proc.pid} ;;\n'
                                f'  *stop*) kill -TERM {dp.proc.pid} ;;\nesac\n')
    env = {**dp.env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NO_COLOR": "1"}
    with trio.fail_after(30):
        r = await trio.run_process([AG, "stop"], env=env, capture_stdout=True, capture_stderr=True, check=False)
    assert r.returncode == 0, r.stderr
    assert b"runs under the systemd user unit" in r.stderr and b"Stopped aegisd" in r.stdout
    assert "--user stop aegisd" in log.read_text().splitlines()
    with trio.fail_after(5):
        await dp.proc.wait()
    assert "daemon.stop" not in (dp.state_dir / "logs" / "audit.jsonl").read_text()  # systemd stopped it


async def _agent_runs(h: Any, sid: str, cmd: str) -> tuple[int, str]:
    """The session's agent runs a shell command as one of its tools: (exit code, output)."""
    import base64

    after = h.daemon.bus.last_id
    r = await h.http.post(f"/v1/sessions/{sid}/send", json={"text": "sh:" + base64.b64encode(cmd.encode()).decode()})
    assert r.status_code == 200, r.text
    ev = await h.wait_event(sid, "message", after_id=after, timeout=60,
                            match=lambda e: str(e.data.get("text", "")).startswith("sh["))
    head, _, text = str(ev.data["text"]).partition(": ")
    return int(head[3:-1]), text


async def test_an_agent_cannot_stop_the_daemon_and_whoami_says_its_scope(daemon: Any, workdir: Path) -> None:
    s = await daemon.create(workdir, reuse=False)
    await daemon.wait_status(s["id"], "idle")
    cli = f"AEGIS_SOCKET={daemon.daemon.socket_path} NO_COLOR=1 {AG}"
    code, text = await _agent_runs(daemon, s["id"], f"{cli} whoami")
    assert code == 0, text
    assert f"the agent of session {s['id']}" in text and "never approve its prompts" in text
    code, text = await _agent_runs(daemon, s["id"], f"{cli} stop")
    assert code == 1 and "daemon.stop is not available to a session's agent" in text, text
    assert not daemon.shutdown.is_set() and (await daemon.http.get("/v1/health")).status_code == 200
    code, text = await _agent_runs(daemon, s["id"], f"{cli} --json whoami")
    assert json.loads(text)["kind"] == "agent"


async def test_ag_run_port_talks_to_the_daemon_on_that_port(nursery: trio.Nursery, tmp_path: Path,
                                                            short_tmp: Path) -> None:
    port = _free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    work = tmp_path / "w"
    work.mkdir()
    allowed = {"AEGIS_ALLOWED_WORK_DIRS": str(tmp_path)}
    a = await start_daemon_process(tmp_path / "a", short_tmp / "a", nursery=nursery, extra_env=allowed)
    b = await start_daemon_process(tmp_path / "b", short_tmp / "b", nursery=nursery,
                                   extra_env={**allowed, "AEGIS_PORT": str(port)})
    # the CLI's environment names A's socket; --port names B: B it is
    r = await ag(a, "run", "--port", str(port), "say:on b", "--cwd", str(work))
    assert "on b" in r.stdout
    assert json.loads((await ag(a, "list", "--json")).stdout)["sessions"] == []
    assert [s["name"] for s in json.loads((await ag(b, "list", "--json")).stdout)["sessions"]] == ["cc-say-on-b"]
    assert f"\nport: {port}\n" in (work / ".aegis" / "config.yaml").read_text()  # the port of the daemon used
    # AEGIS_PORT too, for every command
    with trio.fail_after(20):
        res = await trio.run_process([AG, "list", "--json"], env={**a.env, "AEGIS_PORT": str(port)},
                                     capture_stdout=True, check=False)
    assert [s["name"] for s in json.loads(res.stdout)["sessions"]] == ["cc-say-on-b"]
    # nothing on another port, while A owns the state directory: no second daemon, a clear message
    other = _free_port()
    r = await ag(a, "run", "--port", str(other), "say:x", "--cwd", str(work), check=False)
    assert r.returncode == 1 and f"nothing answers on port {other}" in r.stderr and "AEGIS_STATE_DIR" in r.stderr
    for dp in (a, b):
        dp.proc.send_signal(signal.SIGTERM)
        await dp.proc.wait()


async def test_ag_run_port_starts_a_daemon_on_that_port(tmp_path: Path, short_tmp: Path) -> None:
    port = _free_port()
    work = tmp_path / "w"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NO_COLOR": "1",
           "AEGIS_STATE_DIR": str(tmp_path / "state"), "AEGIS_SOCKET": str(short_tmp / "d" / "s.sock"),
           "AEGIS_ALLOWED_WORK_DIRS": str(tmp_path), "AEGIS_AGENT_COMMAND": " ".join(FAKE_AGENT_CMD),
           "FAKE_ACP_STATE_DIR": str(tmp_path / "fake")}
    with trio.fail_after(60):
        r = await trio.run_process([AG, "run", "--port", str(port), "say:hello", "--cwd", str(work)], env=env,
                                   capture_stdout=True, capture_stderr=True, check=False)
    from aegisctl.client import Client

    with Client(url=f"http://127.0.0.1:{port}") as c:
        pid = c.call("health")["pid"]  # it listens on that port
    try:
        assert r.returncode == 0, r.stderr
        assert f"\nport: {port}\n" in (work / ".aegis" / "config.yaml").read_text()  # not 9100
        assert b"hello" in r.stdout and f"on port {port}".encode() in r.stderr
        with trio.fail_after(30):
            r = await trio.run_process([AG, "stop"], env=env, capture_stdout=True, capture_stderr=True, check=False)
        assert r.returncode == 0 and f"Stopped aegisd (pid {pid}, http://127.0.0.1:{port})".encode() in r.stdout
        assert not pid_alive(pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_init_name_is_the_default_session_name(nursery: trio.Nursery, tmp_path: Path,
                                                     short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    r = CliRunner().invoke(cli, ["init", "--cwd", str(work), "--name", "payments-api"], env=runner_env(tmp_path))
    assert r.exit_code == 0, r.output
    assert "\nname: payments-api\n" in (work / ".aegis" / "config.yaml").read_text()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    await ag(dp, "run", "say:x", "--cwd", str(work))
    r = await ag(dp, "create", "say:y", "--cwd", str(work))
    assert "Session created: payments-api" in r.stdout
    r = await ag(dp, "create", "say:z", "--cwd", str(work), "--name", "mine")
    assert "Session created: mine" in r.stdout
    names = [s["name"] for s in json.loads((await ag(dp, "list", "--json")).stdout)["sessions"]]
    assert names == ["mine", "payments-api", "payments-api"]
    # the config `ag run` writes names the port of the daemon it used (here a random one), not 9100
    other = tmp_path / "other"
    other.mkdir()
    await ag(dp, "run", "say:x", "--cwd", str(other))
    port = int(dp.http_url.rsplit(":", 1)[1])
    assert port != 9100 and f"\nport: {port}\n" in (other / ".aegis" / "config.yaml").read_text()
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_a_refused_workdir_gets_no_config_and_messages_arrive_as_is(nursery: trio.Nursery, tmp_path: Path,
                                                                       short_tmp: Path) -> None:
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    refused = short_tmp / "x"  # under /tmp: never an allowed workDir
    refused.mkdir()
    r = await ag(dp, "run", "say:x", "--cwd", str(refused), check=False)
    assert r.returncode == 1 and "INVALID_WORKDIR" in r.stderr
    assert not (refused / ".aegis").exists()
    # an id prefix under 4 characters: the daemon's message, as it is
    for surface in ({}, {"AEGIS_URL": dp.http_url}):
        with trio.fail_after(20):
            res = await trio.run_process([AG, "show", "abc"], env={**dp.env, **surface, "NO_COLOR": "1"},
                                         capture_stderr=True, check=False)
        assert res.returncode == 1
        assert res.stderr.decode() == ("error: session id prefix 'abc' is too short: give at least 4 characters "
                                       "(`ag list` shows the ids)\n")
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_whoami_and_login_on_a_daemon_without_auth(nursery: trio.Nursery, tmp_path: Path,
                                                         short_tmp: Path) -> None:
    import getpass

    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    r = await ag(dp, "whoami")
    assert r.stdout.startswith(f"{getpass.getuser()} (admin) on unix:{dp.socket}\n")
    assert "zero-config" in r.stdout and "no token, API keys or single sign-on" in r.stdout
    http = {**dp.env, "AEGIS_URL": dp.http_url, "NO_COLOR": "1"}
    with trio.fail_after(20):
        res = await trio.run_process([AG, "whoami"], env=http, capture_stdout=True, check=False)
    assert res.returncode == 0 and f"(admin) on {dp.http_url}".encode() in res.stdout
    key = json.loads((await ag(dp, "keys", "create", "ci", "--role", "operator", "--json")).stdout)
    with trio.fail_after(20):
        res = await trio.run_process([AG, "whoami"], env={**http, "AEGIS_AUTH_TOKEN": key["key"]},
                                     capture_stdout=True, check=False)
    assert res.returncode == 0 and res.stdout.decode().startswith(f"key:ci (operator) on {dp.http_url}\n")
    await ag(dp, "keys", "revoke", key["id"])
    # single sign-on is the daemon's: say which variables to set there, and that it needs a restart
    r = await ag(dp, "login", "--no-open", check=False)
    assert r.returncode == 1
    assert f"the daemon at {dp.http_url} has no single sign-on" in r.stderr
    assert "AEGIS_OIDC_ISSUER and AEGIS_OIDC_CLIENT_ID in the daemon's environment" in r.stderr
    assert "restart" in r.stderr
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
