"""Shared fixtures: a daemon in-process (fast) or as a real subprocess (signals, SIGKILL), the fake ACP
agent, and helpers that wait on events with timeouts (never on sleeps)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aegisd.app.daemon import Daemon
from aegisd.core.config import Config, load_config
from aegisd.core.states import State

# Hermetic: the user's shell may export AEGIS_PORT, AEGIS_AUTH_TOKEN… (the README tells them to). Tests build
# their own environment; only the AEGIS_TEST_* switches (which services to test against) come from outside.
USER_AEGIS_ENV = {k: os.environ.pop(k) for k in list(os.environ)
                  if k.startswith("AEGIS_") and not k.startswith("AEGIS_TEST_")}

ROOT = Path(__file__).resolve().parent.parent
FAKE_AGENT = str(ROOT / "tests" / "fake_agent.py")
FAKE_AGENT_CMD = [sys.executable, FAKE_AGENT]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The kill -9 soak first: at a minute or more it is the suite's longest test, and run last by one of the
    parallel workers (`make test`) it would leave the other idle to the end."""
    items.sort(key=lambda item: item.get_closest_marker("soak") is None)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path is limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ag-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def store_name(tmp_path: Path) -> str:
    """The PostgreSQL table prefix / Redis key prefix of one test's daemons (shared by its restarts)."""
    return f"t{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"


def drop_store(kind: str, name: str) -> None:
    """Remove what a test left in PostgreSQL or Redis."""
    if kind == "postgres":
        import psycopg

        with psycopg.connect(os.environ["AEGIS_TEST_PG_URL"], autocommit=True) as conn:
            for suffix in ("meta", "sessions", "transcript", "events", "docs", "logs", "log_seq", "nodes"):
                conn.execute(f'DROP TABLE IF EXISTS public."{name}_{suffix}"')
    elif kind == "redis":
        import redis

        with redis.Redis.from_url(os.environ["AEGIS_TEST_REDIS_URL"]) as r:
            keys = list(r.scan_iter(f"{name}:*"))
            if keys:
                r.delete(*keys)


def make_config(tmp_path: Path, sock_dir: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "stateDir": str(tmp_path / "state"),
        "socket": str(sock_dir / "s" / "aegisd.sock"),
        "port": 0,
        "allowedWorkDirs": [str(tmp_path)],
        "agentCommand": FAKE_AGENT_CMD,
        "killGraceMs": 1500,
        "acpInitTimeoutMs": 5000,
        # the whole suite can run against another store: AEGIS_TEST_STORE=memory|postgres|redis
        "sessionStore": os.environ.get("AEGIS_TEST_STORE", "file"),
    }
    if values["sessionStore"] == "postgres":
        values["postgresUrl"] = os.environ["AEGIS_TEST_PG_URL"]
        values["pgTable"] = store_name(tmp_path)
    if values["sessionStore"] == "redis":
        values["redisUrl"] = os.environ["AEGIS_TEST_REDIS_URL"]
        values["redisKeyPrefix"] = store_name(tmp_path)
    values.update(overrides)
    return load_config(env={}, config_path=None, overrides=values, cwd=tmp_path)


def agent_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "FAKE_ACP_STATE_DIR": str(tmp_path / "fake-acp")}
    env.update(extra)
    return env


class DaemonHandle:
    def __init__(self, daemon: Daemon, shutdown: trio.Event) -> None:
        self.daemon = daemon
        self.shutdown = shutdown
        self.http = httpx.AsyncClient(base_url=daemon.http_url, timeout=20)

    @property
    def manager(self) -> Any:
        return self.daemon.manager

    async def wait_status(self, sid: str, *statuses: State | str, timeout: float = 10) -> str:
        want = {State(s) for s in statuses}
        with trio.fail_after(timeout):
            sub = await self.daemon.bus.subscribe(session_id=sid)
            async with sub:
                rec = self.manager.records[sid]
                if rec.status in want:
                    return rec.status.value
                async for ev in sub:
                    if ev.event == "status" and State(ev.data["status"]) in want:
                        return str(ev.data["status"])
        raise AssertionError("unreachable")

    async def wait_event(self, sid: str | None, name: str, *, timeout: float = 10, after_id: int = 0,
                         match: Any = None) -> Any:
        with trio.fail_after(timeout):
            sub = await self.daemon.bus.subscribe(session_id=sid, after_id=after_id, maxsize=1_000_000)
            async with sub:
                async for ev in sub:
                    if ev.event == name and (match is None or match(ev)):
                        return ev
        raise AssertionError("unreachable")

    async def create(self, workdir: Path, **body: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/sessions", json={"workDir": str(workdir), **body})
        assert r.status_code in (200, 201), r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def daemon_factory(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> AsyncIterator[Any]:
    handles: list[DaemonHandle] = []

    async def start(*, env: dict[str, str] | None = None, **overrides: Any) -> DaemonHandle:
        cfg = make_config(tmp_path, short_tmp, **overrides)
        shutdown = trio.Event()
        d = Daemon(cfg, environ=env if env is not None else agent_env(tmp_path))
        done = trio.Event()

        async def runner(task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await d.run(shutdown, task_status=task_status)
            finally:
                done.set()
        await nursery.start(runner)
        h = DaemonHandle(d, shutdown)
        h.done = done  # type: ignore[attr-defined]
        handles.append(h)
        return h

    yield start
    for h in handles:
        await h.http.aclose()
        h.shutdown.set()
        with trio.fail_after(15):
            await h.done.wait()  # type: ignore[attr-defined]
    kind = os.environ.get("AEGIS_TEST_STORE", "file")
    if handles and kind in ("postgres", "redis"):
        await trio.to_thread.run_sync(drop_store, kind, store_name(tmp_path))


@pytest.fixture
async def daemon(daemon_factory: Any) -> DaemonHandle:
    return await daemon_factory()  # type: ignore[no-any-return]


class DaemonProcess:
    """aegisd as a real child process (for signals, SIGKILL and the CLI)."""

    def __init__(self, proc: trio.Process, state_dir: Path, socket: Path, http_url: str, env: dict[str, str]):
        self.proc = proc
        self.state_dir = state_dir
        self.socket = socket
        self.http_url = http_url
        self.env = env
        self.log_path: Path | None = None
        self.drained = trio.Event()  # set once the daemon's whole output is in log_path


_STARTED: list[trio.Process] = []


@pytest.fixture(autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    """A test that fails half-way must not leave its aegisd subprocess running (the daemon's lifeline
    then takes its agents down)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass


async def start_daemon_process(tmp_path: Path, sock_dir: Path, *, extra_env: dict[str, str] | None = None,
                               args: list[str] | None = None, nursery: trio.Nursery | None = None,
                               timeout: float = 20, wrapper: list[str] | None = None) -> DaemonProcess:
    state = tmp_path / "state"
    sock = sock_dir / "s" / "aegisd.sock"
    env = agent_env(tmp_path)
    env.update({"AEGIS_STATE_DIR": str(state), "AEGIS_SOCKET": str(sock), "AEGIS_PORT": "0",
                "AEGIS_ALLOWED_WORK_DIRS": str(tmp_path), "AEGIS_AGENT_COMMAND": " ".join(FAKE_AGENT_CMD),
                "AEGIS_KILL_GRACE_MS": "1500", "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    proc = await trio.lowlevel.open_process([*(wrapper or []), sys.executable, "-m", "aegisd", *(args or [])], env=env,
                                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _STARTED.append(proc)
    assert proc.stdout is not None
    buf = b""
    url = None
    with trio.fail_after(timeout):
        while url is None:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(f"aegisd exited before ready: {buf.decode(errors='replace')}")
            buf += chunk
            for line in buf.split(b"\n"):
                if b'"aegisd.ready"' in line:
                    url = json.loads(line)["http"]
    log_path = tmp_path / f"aegisd-{proc.pid}.log"

    dp = DaemonProcess(proc, state, sock, url, env)
    dp.log_path = log_path

    async def drain() -> None:  # keep reading so the daemon never blocks on a full pipe
        try:
            with open(log_path, "ab") as f:
                f.write(buf)
                while True:
                    try:
                        chunk = await proc.stdout.receive_some(65536)  # type: ignore[union-attr]
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        return
                    if not chunk:
                        return
                    f.write(chunk)
                    f.flush()  # readable while the daemon runs, e.g. by a test reporting a timeout
        finally:
            dp.drained.set()
    if nursery is not None:
        nursery.start_soon(drain)
    return dp


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


async def wait_dead(pids: list[int], timeout: float = 10) -> None:
    """Wait until every pid is gone. Processes give no event for a non-child's death, so this polls /proc,
    bounded by a timeout."""
    with trio.fail_after(timeout):
        while any(pid_alive(p) for p in pids):
            await trio.sleep(0.02)


pytest.register_assert_rewrite("tests.helpers")
_ = partial
