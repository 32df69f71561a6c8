"""Resource ceilings and the kill path (issue 14): a kill answers at once while the agent's stop goes on; the
daemon raises its fd limit; running out of fds, processes or memory fails one create with 503, never the
daemon or another session."""

from __future__ import annotations

import errno
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aegisd.core.states import State

from .conftest import DaemonHandle, agent_env, pid_alive, start_daemon_process, wait_dead


async def test_kill_answers_before_the_agent_is_gone(daemon_factory, tmp_path: Path, workdir: Path) -> None:
    """An agent that ignores stdin EOF and SIGTERM needs the whole stop sequence (SIGKILL after the grace): the
    DELETE answers, with the session `killed` and saved, while that agent still exists; it is gone after."""
    d: DaemonHandle = await daemon_factory(env=agent_env(tmp_path, FAKE_ACP_MODE="stubborn"), killGraceMs=1500)
    s = await d.create(workdir, reuse=False)
    sid = s["id"]
    pid = d.manager.records[sid].pid
    assert pid is not None and pid_alive(pid)
    runner = d.manager.runners[sid]
    r = await d.http.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "id": sid, "status": "killed"}
    assert pid_alive(pid) and not runner.finished.is_set()  # the stop sequence is still under way
    stored = {x.id: x for x in await d.daemon.store.load_sessions()}[sid]
    assert stored.status == State.KILLED  # durable before the answer
    # the session reads as killed meanwhile; a second DELETE is refused as for any ended session
    assert (await d.http.get(f"/v1/sessions/{sid}")).json()["status"] == "killed"
    assert (await d.http.delete(f"/v1/sessions/{sid}")).status_code == 409
    assert (await d.http.post(f"/v1/sessions/{sid}/send", json={"text": "hi"})).status_code == 409
    with trio.fail_after(10):
        await runner.finished.wait()
    await wait_dead([pid])
    assert sid not in d.manager.runners


async def _reply(http: Any, sid: str, text: str) -> str:
    """Send ``text`` to a session and return what the agent said back (the transcript's last message)."""
    r = await http.post(f"/v1/sessions/{sid}/send", json={"text": text})
    assert r.status_code == 200, r.text
    with trio.fail_after(20):
        while True:
            entries = (await http.get(f"/v1/sessions/{sid}/read")).json().get("messages", [])
            said = [e.get("text", "") for e in entries if e.get("role") == "assistant"]
            if said and text.removeprefix("say:") in said[-1]:
                return str(said[-1])
            await trio.sleep(0.05)


async def test_out_of_fds_fails_one_create_not_the_daemon(tmp_path: Path, short_tmp: Path, nursery: Any,
                                                          workdir: Path) -> None:
    """The real daemon under `prlimit --nofile=256:256` (so it cannot raise its limit): creates past what the
    limit allows answer 503 RESOURCE_EXHAUSTED with Retry-After; the sessions already running keep working,
    health answers, and once some sessions are killed creates work again."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, wrapper=["prlimit", "--nofile=256:256"],
                                    extra_env={"AEGIS_KILL_GRACE_MS": "300"})
    async with httpx.AsyncClient(base_url=dp.http_url, timeout=30) as http:
        made: list[str] = []
        refused = None
        for _ in range(100):
            r = await http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
            if r.status_code == 503:
                refused = r
                break
            assert r.status_code == 201 and r.json()["status"] == "idle", r.text
            made.append(r.json()["id"])
        assert refused is not None, f"{len(made)} sessions and no refusal"
        body = refused.json()
        assert body["code"] == "RESOURCE_EXHAUSTED" and body["details"]["limit"] == 256, body
        assert int(refused.headers["Retry-After"]) > 0
        assert 20 <= len(made) <= 60  # (256 - ~14 at start - the reserve of 36) / 4 fds per session
        again = await http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
        assert again.status_code == 503  # and again: nothing was started for the refused one
        # the daemon and its sessions go on
        assert dp.proc.returncode is None
        assert (await http.get("/v1/health")).json()["status"] == "ok"
        assert "hello-first" in await _reply(http, made[0], "say:hello-first")
        assert "hello-last" in await _reply(http, made[-1], "say:hello-last")
        listed = (await http.get("/v1/sessions", params={"limit": 100})).json()["sessions"]
        assert sum(1 for s in listed if s["status"] == "idle") == len(made)
        stats = (await http.get("/v1/alerts/stats")).json()
        assert stats["trackers"]["resource_exhausted"]["total"] >= 2
        # ending sessions frees their fds: creates work again
        for sid in made[:5]:
            assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 200
        with trio.fail_after(20):
            while True:
                r = await http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
                if r.status_code == 201:
                    break
                assert r.status_code == 503, r.text
                await trio.sleep(0.1)  # the killed agents' pipes close once their stop sequence ends
        assert r.json()["status"] == "idle"
        assert "still-here" in await _reply(http, made[-1], "say:still-here")
        # `ag doctor` reads the running daemon's limit and says what it allows
        res = await trio.run_process([sys.executable, "-m", "aegisctl", "doctor", "--json"], capture_stdout=True,
                                     env={**dp.env, "NO_COLOR": "1"}, check=False)
        fd = next(c for c in json.loads(res.stdout)["checks"] if c["name"] == "file descriptors")
        assert fd["status"] == "warn" and f"(pid {dp.proc.pid}): open files 256 (hard 256)" in fd["detail"], fd
        assert "room for ~39 sessions at 4 fds each; maxSessions 1000" in fd["detail"], fd
    dp.proc.terminate()
    with trio.fail_after(20):
        assert await dp.proc.wait() == 0
    log = dp.log_path.read_text() if dp.log_path else ""
    limits = next(json.loads(line) for line in log.splitlines() if '"aegisd.limits"' in line)
    assert limits["nofile"] == 256 and limits["nofile_hard"] == 256


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"),
                                   BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
                                   OSError(errno.ENOMEM, "Cannot allocate memory")])
async def test_spawn_out_of_resources_is_503_for_that_create(daemon: DaemonHandle, workdir: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             error: OSError) -> None:
    """Out of fds (pipes), processes (fork's EAGAIN) or memory at the spawn: that create answers 503 with
    Retry-After and raises an alert; the session running beside it is untouched."""
    import aegisd.sessions.runner as runner_mod

    first = await daemon.create(workdir, reuse=False)
    real = runner_mod.spawn_agent

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error
    monkeypatch.setattr(runner_mod, "spawn_agent", failing)
    r = await daemon.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "RESOURCE_EXHAUSTED" and r.headers["Retry-After"] == "5"
    assert daemon.daemon.alerts.trackers["resource_exhausted"].total == 1
    monkeypatch.setattr(runner_mod, "spawn_agent", real)
    assert daemon.manager.records[first["id"]].status == State.IDLE
    assert "still" in await _reply(daemon.http, first["id"], "say:still")
    assert (await daemon.http.post("/v1/sessions", json={"workDir": str(workdir), "reuse": False})).status_code == 201


async def test_a_failing_save_at_the_end_never_ends_the_daemon(daemon: DaemonHandle, workdir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure of issue 14: a session's end could not be saved (EMFILE), the error escaped to the root
    nursery and aegisd exited. Now the save is retried briefly, and what still fails ends that runner only."""
    a = await daemon.create(workdir, reuse=False)
    b = await daemon.create(workdir, reuse=False)
    store = daemon.daemon.store
    real = store.save_session

    async def emfile(rec: Any) -> None:
        if rec.id == a["id"]:
            raise OSError(errno.EMFILE, "Too many open files")
        await real(rec)
    monkeypatch.setattr(store, "save_session", emfile)
    pid = daemon.manager.records[a["id"]].pid
    r = await daemon.http.delete(f"/v1/sessions/{a['id']}")
    assert r.status_code == 503 and r.json()["code"] == "RESOURCE_EXHAUSTED"  # not saved: not acknowledged
    assert pid is not None
    await wait_dead([pid])  # the agent is stopped all the same
    assert not daemon.done.is_set()  # type: ignore[attr-defined]
    assert (await daemon.http.get("/v1/health")).json()["status"] == "ok"
    assert "alive" in await _reply(daemon.http, b["id"], "say:alive")
