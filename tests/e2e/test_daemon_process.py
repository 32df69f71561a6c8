"""The real daemon as a subprocess: signals, SIGKILL, restart and resume, no orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from pathlib import Path
from typing import Any

import httpx
import trio

from aegisctl.client import Client

from ..conftest import pid_alive, start_daemon_process, wait_dead


def client(dp: Any) -> Client:
    return Client(socket_path=dp.socket, timeout=30)


async def call(dp: Any, op: str, **params: Any) -> Any:
    def run() -> Any:
        with client(dp) as c:
            return c.call(op, **params)
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


async def follow_until(dp: Any, sid: str, event: str, match: Any = None, **params: Any) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with contextlib.closing(client(dp).stream("session.follow", id=sid, **params)) as events:
            for ev in events:
                if ev["event"] == event and (match is None or match(ev)):
                    return ev  # type: ignore[no-any-return]
        raise AssertionError(f"stream ended without {event}")
    try:
        with trio.fail_after(20):  # the blocking client thread is abandoned on timeout
            return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    except trio.TooSlowError:
        tail = dp.log_path.read_bytes()[-4000:].decode(errors="replace") if dp.log_path else ""
        raise AssertionError(f"no {event} event for {sid} in 20 s; daemon log:\n{tail}") from None


def grandchildren(tmp_path: Path) -> list[int]:
    f = tmp_path / "pids"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


async def test_sigterm_clean_shutdown(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"FAKE_ACP_PID_FILE": str(tmp_path / "pids")})
    assert stat.S_IMODE(dp.socket.stat().st_mode) == 0o600
    s = await call(dp, "session.create", workDir=str(work), prompt="grandchild")
    await follow_until(dp, s["id"], "turn", afterId=0)
    agent_pid = (await call(dp, "session.get", id=s["id"]))["pid"]
    kids = grandchildren(tmp_path)
    assert kids and all(pid_alive(p) for p in kids)
    t0 = trio.current_time()
    dp.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        code = await dp.proc.wait()
    assert trio.current_time() - t0 < 10
    assert code == 0
    assert not dp.socket.exists()
    await wait_dead([agent_pid, *kids], timeout=5)


async def test_sigkill_leaves_no_orphans(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"FAKE_ACP_PID_FILE": str(tmp_path / "pids")})
    a = await call(dp, "session.create", workDir=str(work), prompt="grandchild", reuse=False)
    b = await call(dp, "session.create", workDir=str(work), prompt="grandchild-setsid", reuse=False)
    await follow_until(dp, a["id"], "turn", afterId=0)
    await follow_until(dp, b["id"], "turn", afterId=0)
    pids = [(await call(dp, "session.get", id=x["id"]))["pid"] for x in (a, b)] + grandchildren(tmp_path)
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)
    os.kill(dp.proc.pid, signal.SIGKILL)
    await dp.proc.wait()
    # the lifeline reaper sees the pipe close and kills every agent group, and the setsid escapee too
    await wait_dead(pids, timeout=10)


async def test_kill_session_kills_grandchildren(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"FAKE_ACP_PID_FILE": str(tmp_path / "pids")})
    s = await call(dp, "session.create", workDir=str(work), prompt="grandchild;grandchild-setsid")
    await follow_until(dp, s["id"], "turn", afterId=0)
    pids = [(await call(dp, "session.get", id=s["id"]))["pid"], *grandchildren(tmp_path)]
    assert len(pids) == 3
    await call(dp, "session.kill", id=s["id"])
    await wait_dead(pids, timeout=5)
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()


async def test_restart_resumes_with_session_load(nursery: trio.Nursery, tmp_path: Path,
                                                 short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    s = await call(dp, "session.create", workDir=str(work), prompt="say:before restart", name="keeper")
    await follow_until(dp, s["id"], "turn", afterId=0)
    done = await call(dp, "session.create", workDir=str(work), reuse=False)
    await call(dp, "session.kill", id=done["id"])
    before = await call(dp, "session.transcript", id=s["id"], limit=200)
    dp.proc.send_signal(signal.SIGKILL)  # the hard way: nothing acknowledged may be lost
    await dp.proc.wait()
    dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    async with httpx.AsyncClient(base_url=dp2.http_url) as http:
        listed = {x["id"]: x for x in (await http.get("/v1/sessions")).json()["sessions"]}
    assert set(listed) == {s["id"], done["id"]}
    assert listed[done["id"]]["status"] == "killed"
    await follow_until(dp2, s["id"], "status", afterId=0, match=lambda e: e["data"]["status"] == "idle")
    after = await call(dp2, "session.transcript", id=s["id"], limit=200)
    assert after["messages"] == before["messages"]  # intact, no replayed duplicates
    # the resumed session works: the agent remembers (session/load restored its history)
    await call(dp2, "session.send", id=s["id"], text="say:after restart")
    ev = await follow_until(dp2, s["id"], "turn", afterId=0, match=lambda e: e["data"]["turn"] == 2)
    assert ev["data"]["stopReason"] == "end_turn"
    texts = [m["text"] for m in (await call(dp2, "session.transcript", id=s["id"], limit=200))["messages"]]
    assert "before restart" in texts and "after restart" in texts
    dp2.proc.send_signal(signal.SIGTERM)
    await dp2.proc.wait()


async def test_restart_resumes_when_session_load_answers_null(nursery: trio.Nursery, tmp_path: Path,
                                                               short_tmp: Path) -> None:
    """Older ACP agents answered `session/load` with a null result: that is a success, not a broken protocol."""
    work = tmp_path / "w"
    work.mkdir()
    env = {"FAKE_ACP_LOAD_NULL": "1"}
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env=env)
    s = await call(dp, "session.create", workDir=str(work), prompt="say:before restart")
    await follow_until(dp, s["id"], "turn", afterId=0)
    dp.proc.send_signal(signal.SIGKILL)
    await dp.proc.wait()
    dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env=env)
    resuming = await follow_until(dp2, s["id"], "status", afterId=0,
                                  match=lambda e: e["data"].get("detail") == "daemon_restart")
    await follow_until(dp2, s["id"], "status", afterId=resuming["id"], match=lambda e: e["data"]["status"] == "idle")
    got = await call(dp2, "session.get", id=s["id"])
    assert got["status"] == "idle" and got.get("crash") is None
    await call(dp2, "session.send", id=s["id"], text="recall")
    ev = await follow_until(dp2, s["id"], "turn", afterId=0, match=lambda e: e["data"]["turn"] == 2)
    assert ev["data"]["stopReason"] == "end_turn"
    dp2.proc.send_signal(signal.SIGTERM)
    await dp2.proc.wait()


async def test_restart_without_load_support_marks_crashed(nursery: trio.Nursery, tmp_path: Path,
                                                          short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    env = {"FAKE_ACP_NO_LOAD": "1"}
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env=env)
    s = await call(dp, "session.create", workDir=str(work))
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
    dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env=env)
    await follow_until(dp2, s["id"], "ended", afterId=0)
    got = await call(dp2, "session.get", id=s["id"])
    assert got["status"] == "crashed"
    assert got["endReason"] == "daemon_restart"
    assert "loadSession" in got["crash"]["reason"]
    dp2.proc.send_signal(signal.SIGTERM)
    await dp2.proc.wait()


async def test_event_ids_survive_restart(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    s = await call(dp, "session.create", workDir=str(work), prompt="say:x")
    last = await follow_until(dp, s["id"], "turn", afterId=0)
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
    dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    await call(dp2, "session.send", id=s["id"], text="say:y")
    ev = await follow_until(dp2, s["id"], "turn", afterId=last["id"])
    assert ev["id"] > last["id"]
    dp2.proc.send_signal(signal.SIGTERM)
    await dp2.proc.wait()


async def test_sd_notify_ready_stopping_watchdog(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    import socket as pysocket

    addr = str(short_tmp / "notify.sock")
    sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    await sock.bind(addr)
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000"})
    got: list[str] = []
    with trio.fail_after(10):
        while not any("WATCHDOG=1" in m for m in got):
            got.append((await sock.recv(4096)).decode())
    assert any(m.startswith("READY=1") for m in got)
    dp.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        while not any("STOPPING=1" in m for m in got):
            got.append((await sock.recv(4096)).decode())
    assert await dp.proc.wait() == 0
    sock.close()


async def test_logs_are_json_lines(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
    import json as _json

    with trio.fail_after(5):
        await dp.drained.wait()
    assert dp.log_path is not None
    log = dp.log_path
    assert b"aegisd.stopped" in log.read_bytes()
    lines = [line for line in log.read_bytes().splitlines() if line.strip()]
    records = [_json.loads(line) for line in lines]
    assert {"event", "level", "timestamp"} <= set(records[0])
    assert any(r["event"] == "aegisd.ready" for r in records)


async def test_sigkill_mid_verification_leaves_no_step_behind(nursery: trio.Nursery, tmp_path: Path,
                                                              short_tmp: Path) -> None:
    """A verification step is the daemon's child too: its group and a setsid escapee die with the daemon."""
    work = tmp_path / "w"
    work.mkdir()
    fifo = tmp_path / "step-pids"
    os.mkfifo(fifo)
    (work / "Makefile").write_text(
        f"test:\n\t@sleep 300 & a=$$!; setsid sleep 301 & b=$$!; echo $$a $$b > {fifo}; wait\n")
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    s = await call(dp, "session.create", workDir=str(work))

    def verify() -> None:
        with contextlib.suppress(Exception), client(dp) as c:
            c.call("session.verify", id=s["id"])
    nursery.start_soon(lambda: trio.to_thread.run_sync(verify, abandon_on_cancel=True))
    with trio.fail_after(20):  # the step announces its pids through the fifo (opening it waits for the writer)
        step_pids = [int(x) for x in (await trio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True)).split()]
    assert len(step_pids) == 2 and all(pid_alive(p) for p in step_pids)
    os.kill(dp.proc.pid, signal.SIGKILL)
    await dp.proc.wait()
    await wait_dead(step_pids, timeout=10)
