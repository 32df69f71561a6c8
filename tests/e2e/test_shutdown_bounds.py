"""Shutdown always ends (issue 13): a real aegisd whose store fails or hangs gets SIGTERM and exits within the
systemd unit's TimeoutStopSec, non-zero, with the reason logged, and its agents are gone all the same."""

from __future__ import annotations

import re
import shutil
import signal
import uuid
from pathlib import Path

import pytest
import trio

from ..conftest import ROOT, drop_store, start_daemon_process, wait_dead
from ..test_store_faults import PG, Proxy, _server
from .test_daemon_process import call, follow_until


def stop_timeout() -> float:
    """TimeoutStopSec of the unit we ship: what systemd allows before it SIGKILLs."""
    unit = (ROOT / "systemd" / "aegisd.service").read_text()
    m = re.search(r"^TimeoutStopSec=(\d+)", unit, re.M)
    assert m, "the unit sets TimeoutStopSec"
    return float(m.group(1))


async def _sigterm_and_wait(dp: object) -> tuple[int, float]:
    proc = dp.proc  # type: ignore[attr-defined]
    t0 = trio.current_time()
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(stop_timeout() + 5):
        code = await proc.wait()
    return code, trio.current_time() - t0


async def test_sigterm_with_the_state_directory_removed(nursery: trio.Nursery, tmp_path: Path,
                                                        short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    s = await call(dp, "session.create", workDir=str(work), prompt="say:hello")
    await follow_until(dp, s["id"], "turn", afterId=0)
    agent = (await call(dp, "session.get", id=s["id"]))["pid"]
    await trio.to_thread.run_sync(shutil.rmtree, dp.state_dir)
    code, took = await _sigterm_and_wait(dp)
    assert code != 0 and took < stop_timeout(), (code, took)
    await wait_dead([agent], timeout=5)
    await dp.drained.wait()
    out = dp.log_path.read_text(errors="replace")  # type: ignore[union-attr]
    assert "store.given_up" in out and "stopped without storing everything" in out


@pytest.mark.skipif(not PG, reason="AEGIS_TEST_PG_URL not set")
async def test_sigterm_with_postgres_connections_blocked(nursery: trio.Nursery, tmp_path: Path,
                                                         short_tmp: Path) -> None:
    name = f"b{uuid.uuid4().hex[:10]}"
    host, port = _server(PG or "", 5432)
    proxy = Proxy(host, port)
    await nursery.start(proxy.run)
    work = tmp_path / "w"
    work.mkdir()
    try:
        dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env={
            "AEGIS_SESSION_STORE": "postgres", "AEGIS_POSTGRES_URL": proxy.url(PG or ""), "AEGIS_PG_TABLE": name})
        s = await call(dp, "session.create", workDir=str(work), prompt="say:hello")
        await follow_until(dp, s["id"], "turn", afterId=0)
        agent = (await call(dp, "session.get", id=s["id"]))["pid"]
        proxy.freeze()  # every connection hangs: nothing answers, nothing fails
        code, took = await _sigterm_and_wait(dp)
        assert code != 0 and took < stop_timeout(), (code, took)
        await wait_dead([agent], timeout=5)
        await dp.drained.wait()
        out = dp.log_path.read_text(errors="replace")  # type: ignore[union-attr]
        assert "store.given_up" in out
    finally:
        proxy.restore()
        await trio.to_thread.run_sync(drop_store, "postgres", name)
