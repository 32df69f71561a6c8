"""Issue 13 items 1 and 2 on the real daemon: acknowledged prompts are stored with their session and survive a
`kill -9` (replayed in order, delivered exactly once), and transcript ids continue from what is stored."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..conftest import start_daemon_process
from .test_daemon_process import call, follow_until


async def transcript(dp: Any, sid: str) -> list[dict[str, Any]]:
    return (await call(dp, "session.transcript", id=sid, limit=200))["messages"]  # type: ignore[no-any-return]


async def wait_transcript(dp: Any, sid: str, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    with trio.fail_after(20):
        while True:
            entries = await transcript(dp, sid)
            if done(entries):
                return entries
            await trio.sleep(0.1)


def users(entries: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in entries if e["role"] == "user"]


def replied(text: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda entries: any(e["role"] == "assistant" and e["text"] == text for e in entries)


async def sigkill(dp: Any) -> None:
    os.kill(dp.proc.pid, signal.SIGKILL)
    await dp.proc.wait()


async def test_queued_prompts_survive_kill_9_in_order_and_exactly_once(nursery: trio.Nursery, tmp_path: Path,
                                                                      short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    s = await call(dp, "session.create", workDir=str(work), prompt="sleep:5000")
    await follow_until(dp, s["id"], "status", afterId=0, match=lambda e: e["data"]["status"] == "running")
    for n, text in enumerate(("say:one", "say:two"), 1):
        res = await call(dp, "session.send", id=s["id"], text=text)
        assert res["queued"] and res["queuePosition"] == n
    before = await transcript(dp, s["id"])
    await sigkill(dp)  # the turn in flight and both queued prompts are acknowledged

    dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    after = await wait_transcript(dp2, s["id"], replied("two"))
    # the prompt that reached the agent is not sent again; the queued ones follow, in order, once each
    assert users(after) == ["sleep:5000", "say:one", "say:two"]
    ids = [e["id"] for e in after]
    assert ids == sorted(set(ids))  # unique and increasing
    assert after[:len(before)] == before  # what was seen keeps its ids
    assert (await call(dp2, "session.get", id=s["id"]))["status"] == "idle"
    dp2.proc.send_signal(signal.SIGTERM)
    await dp2.proc.wait()


async def test_a_session_killed_before_its_agent_gave_it_a_session_starts_afresh(
        nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"FAKE_ACP_MODE": "slow-start:20000"})

    async def create() -> None:  # answered only once the agent is ready: the kill comes first
        try:
            await call(dp, "session.create", workDir=str(work), reuse=False)
        except Exception:  # noqa: BLE001  # the daemon is killed under it
            pass
    nursery.start_soon(create)
    with trio.fail_after(20):
        while not (listed := (await call(dp, "session.list"))["sessions"]):
            await trio.sleep(0.05)
    sid = listed[0]["id"]
    res = await call(dp, "session.send", id=sid, text="say:queued while starting")
    assert res["queued"]
    await sigkill(dp)

    dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    after = await wait_transcript(dp2, sid, replied("queued while starting"))
    assert users(after) == ["say:queued while starting"]
    rec = await call(dp2, "session.get", id=sid)
    assert rec["status"] == "idle" and rec["acpSessionId"]
    dp2.proc.send_signal(signal.SIGTERM)
    await dp2.proc.wait()
