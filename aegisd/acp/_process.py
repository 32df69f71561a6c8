"""Agent child processes: spawn in their own process group with a filtered environment, capture stderr
(bounded), stop with the escalation cancel -> close stdin -> SIGTERM (group) -> SIGKILL (group), and never
leave orphans, even when the daemon itself is SIGKILLed (see :mod:`._reaper`)."""

from __future__ import annotations

import collections
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import structlog
import trio

import aegisd.acp._reaper as _reaper
from aegisd.acp._cgroup import SessionCgroups, join_command

log = structlog.get_logger("aegisd.acp")

# Variables an agent legitimately needs from the daemon's environment. Everything else (the daemon's
# tokens, database URLs, cloud credentials...) stays out unless an agent's config names it in passEnv.
PASS_ENV_NAMES = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "XDG_CONFIG_HOME",
    "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR", "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "API_TIMEOUT_MS", "DISABLE_TELEMETRY", "DISABLE_ERROR_REPORTING",
    "DISABLE_AUTOUPDATER", "NODE_OPTIONS_AEGIS", "VIRTUAL_ENV", "PYTHONPATH", "NO_COLOR",
}
PASS_ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "LC_", "AWS_BEDROCK_", "VERTEX_", "FAKE_ACP_")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def agent_environment(base: Mapping[str, str], *, extra: Mapping[str, str] | None = None,
                      pass_env: list[str] | tuple[str, ...] = (), markers: Mapping[str, str]) -> dict[str, str]:
    """The environment an agent starts with: the allow-listed part of ``base``, then ``extra`` (the agent's
    configured env), then the markers used for orphan sweeping."""
    allowed_names = set(PASS_ENV_NAMES)
    prefixes = list(PASS_ENV_PREFIXES)
    for item in pass_env:
        if item.endswith("*"):
            prefixes.append(item[:-1])
        else:
            allowed_names.add(item)
    env = {k: v for k, v in base.items() if k in allowed_names or k.startswith(tuple(prefixes))}
    # claude-agent-acp passes a flag the CLI refuses as root when IS_SANDBOX is set to anything but "1"
    if base.get("IS_SANDBOX") == "1":
        env["IS_SANDBOX"] = "1"
    for k, v in (extra or {}).items():
        if _NAME_RE.match(k) and "\0" not in v:
            env[k] = v
    env.update(markers)
    return env


class Lifeline:
    """Owns the reaper process for this daemon instance. ``token`` marks every agent we start."""

    def __init__(self, *, grace: float = 2.0) -> None:
        self.token = secrets.token_hex(12)
        self._grace = grace
        self._proc: trio.Process | None = None

    async def start(self) -> None:
        self._proc = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", _reaper.__file__, self.token, str(self._grace)],
            stdin=subprocess.PIPE, start_new_session=True)

    async def _say(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            await self._proc.stdin.send_all(line.encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def register(self, pgid: int) -> None:
        await self._say(f"+{pgid}")

    async def unregister(self, pgid: int) -> None:
        await self._say(f"-{pgid}")

    async def register_cgroups(self, tree: Path) -> None:
        """The daemon's cgroup subtree: killed whole if the daemon dies."""
        await self._say(f"c{tree}")

    async def close(self) -> None:
        """Clean shutdown: closing the pipe makes the reaper sweep (nothing should be left) and exit."""
        if self._proc is None:
            return
        with trio.CancelScope(shield=True):
            if self._proc.stdin is not None:
                await self._proc.stdin.aclose()
            with trio.move_on_after(self._grace + 2):
                await self._proc.wait()
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


class AgentProcess:
    """One running agent: its pipes, its process group, its stderr tail."""

    def __init__(self, proc: trio.Process, *, session_id: str, token: str, stderr_limit: int,
                 cgroups: SessionCgroups | None = None) -> None:
        self.proc = proc
        self.cgroups = cgroups
        self.pgid = proc.pid  # start_new_session: the child leads its own group
        self.session_id = session_id
        self._token = token
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_bytes = 0
        self._stderr_limit = stderr_limit
        self.stderr_total = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stderr_tail(self, limit: int = 4096) -> str:
        data = b"".join(self._stderr)[-limit:]
        return data.decode("utf-8", "replace")

    async def pump_stderr(self) -> None:
        """Keep the last ``stderr_limit`` bytes of the agent's stderr (and log it at debug)."""
        assert self.proc.stderr is not None
        while True:
            try:
                chunk = await self.proc.stderr.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            self.stderr_total += len(chunk)
            self._stderr.append(bytes(chunk))
            self._stderr_bytes += len(chunk)
            while self._stderr_bytes > self._stderr_limit and len(self._stderr) > 1:
                self._stderr_bytes -= len(self._stderr.popleft())
            if self._stderr_bytes > self._stderr_limit:
                only = self._stderr.pop()[-self._stderr_limit:]
                self._stderr.append(only)
                self._stderr_bytes = len(only)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def stop(self, *, grace: float, stdin_grace: float = 0.5) -> None:
        """Close stdin, then SIGTERM the group, then SIGKILL it; finally sweep any process of this session
        that escaped the group. Shielded: runs to the end even while the caller is being cancelled."""
        with trio.CancelScope(shield=True):
            if self.proc.stdin is not None:
                try:
                    await self.proc.stdin.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            if self.proc.returncode is None:
                with trio.move_on_after(stdin_grace):
                    await self.proc.wait()
            if self.proc.returncode is None or self.group_alive():
                self._signal_group(signal.SIGTERM)
                if self.cgroups is not None:
                    self.cgroups.signal(self.session_id, signal.SIGTERM)
                with trio.move_on_after(grace):
                    await self.proc.wait()
                    while self.group_alive():
                        await trio.sleep(0.02)
            if self.proc.returncode is None or self.group_alive():
                self._signal_group(signal.SIGKILL)
                await self.proc.wait()
            markers = {_reaper.MARKER: self._token, _reaper.SESSION_MARKER: self.session_id}
            await trio.to_thread.run_sync(_reaper.kill_marked, markers, set(), grace)
            if self.cgroups is not None:  # what left both the group and the markers (setsid env -i …)
                await self.cgroups.kill(self.session_id)

    async def wait(self) -> int:
        return await self.proc.wait()


async def spawn_agent(command: list[str], *, cwd: str, env: dict[str, str], session_id: str, token: str,
                      stderr_limit: int = 64 * 1024, cgroups: SessionCgroups | None = None) -> AgentProcess:
    """Start an agent in its own process group (so a terminal's Ctrl-C and our group signals are separate) and,
    with ``cgroups``, in the session's own cgroup from its first instruction on.
    Raises OSError (e.g. FileNotFoundError) when the command cannot be started."""
    if not command:
        raise FileNotFoundError("empty agent command")
    if not Path(cwd).is_dir():
        raise FileNotFoundError(f"working directory does not exist: {cwd}")
    argv = command
    if cgroups is not None:
        # the shell that joins the cgroup would report a missing program only as exit 127: say it here
        if shutil.which(command[0], path=env.get("PATH", os.defpath)) is None:
            raise FileNotFoundError(f"no such executable: {command[0]}")
        argv = join_command(command, cgroups.make(session_id))
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
        start_new_session=True)
    return AgentProcess(proc, session_id=session_id, token=token, stderr_limit=stderr_limit, cgroups=cgroups)
