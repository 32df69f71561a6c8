"""Resource ceilings and the kill path (issue 14): a kill answers at once while the agent's stop goes on; the
daemon raises its fd limit; running out of fds, processes or memory fails one create with 503, never the
daemon or another session."""

from __future__ import annotations

from pathlib import Path

import trio

from aegisd.core.states import State

from .conftest import DaemonHandle, agent_env, pid_alive, wait_dead


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
