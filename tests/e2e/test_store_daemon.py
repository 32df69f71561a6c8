"""aegisd as a real process on the PostgreSQL and Redis stores: what was acknowledged survives SIGKILL, the
next daemon resumes the live session, and a second daemon on the same tables/keys is refused."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from ..conftest import FAKE_AGENT_CMD, agent_env, drop_store, start_daemon_process
from .test_daemon_process import call, follow_until

PG = os.environ.get("AEGIS_TEST_PG_URL")
REDIS = os.environ.get("AEGIS_TEST_REDIS_URL")


@pytest.mark.parametrize("kind", [
    pytest.param("postgres", marks=pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set")),
    pytest.param("redis", marks=pytest.mark.skipif(not REDIS, reason="AEGIS_TEST_REDIS_URL not set")),
])
async def test_sigkill_and_resume_on_a_server_store(kind: str, nursery: trio.Nursery, tmp_path: Path,
                                                     short_tmp: Path) -> None:
    name = f"e{uuid.uuid4().hex[:10]}"
    env = {"AEGIS_SESSION_STORE": kind}
    # PostgreSQL: daemons on the same tables are nodes of one cluster; a second one with the same node id is refused
    env.update({"AEGIS_POSTGRES_URL": PG or "", "AEGIS_PG_TABLE": name, "AEGIS_NODE_ID": "n1"} if kind == "postgres"
               else {"AEGIS_REDIS_URL": REDIS or "", "AEGIS_REDIS_KEY_PREFIX": name})
    work = tmp_path / "w"
    work.mkdir()
    try:
        dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env=env)
        s = await call(dp, "session.create", workDir=str(work), prompt="say:before the kill")
        await follow_until(dp, s["id"], "turn", afterId=0)
        before = await call(dp, "session.transcript", id=s["id"], limit=200)
        assert (await call(dp, "hello"))["stateDir"] and (await call(dp, "health"))["store"] == kind

        # a second daemon on the same keys (Redis), or with the same node id (PostgreSQL), is refused (its own socket
        # and state dir); after a kill -9 the daemon restarted in the same state dir takes its node's lease over
        other = dict(agent_env(tmp_path), **env, AEGIS_STATE_DIR=str(tmp_path / "other"),
                     AEGIS_SOCKET=str(short_tmp / "o.sock"), AEGIS_PORT="0",
                     AEGIS_AGENT_COMMAND=" ".join(FAKE_AGENT_CMD))
        with trio.fail_after(40):
            res = await trio.run_process([sys.executable, "-m", "aegisd"], env=other, capture_stdout=True,
                                         capture_stderr=True, check=False)
        assert res.returncode != 0
        assert (b"another aegisd" if kind == "redis" else b"is held by a live aegisd") in res.stdout + res.stderr

        dp.proc.send_signal(signal.SIGKILL)
        await dp.proc.wait()
        dp2 = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env=env, timeout=40)
        await follow_until(dp2, s["id"], "status", afterId=0, match=lambda e: e["data"]["status"] == "idle")
        after = await call(dp2, "session.transcript", id=s["id"], limit=200)
        assert after["messages"] == before["messages"]
        await call(dp2, "session.send", id=s["id"], text="recall")
        ev = await follow_until(dp2, s["id"], "turn", afterId=0, match=lambda e: e["data"]["turn"] == 2)
        assert ev["data"]["stopReason"] == "end_turn"
        async with httpx.AsyncClient(base_url=dp2.http_url) as http:
            msgs = (await http.get(f"/v1/sessions/{s['id']}/transcript?limit=200")).json()["messages"]
        assert "recall: say:before the kill" in [m["text"] for m in msgs]  # the agent kept its history too
        dp2.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await dp2.proc.wait() == 0
    finally:
        await trio.to_thread.run_sync(drop_store, kind, name)
