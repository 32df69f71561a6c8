"""The original Aegis Python client (`pip install ag-client`, module aegis_python_client) against this daemon,
for every method whose route exists here. Its own bugs are listed in docs/clients.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from ..conftest import DaemonHandle

aegis_python_client = pytest.importorskip("aegis_python_client", reason="ag-client not installed (make install)")


async def test_ag_client_session_flow(daemon: DaemonHandle, workdir: Path) -> None:
    from aegis_python_client import AegisClient

    client = AegisClient(base_url=daemon.daemon.http_url)

    def run(fn: Any, *args: Any, **kw: Any) -> Any:
        return trio.to_thread.run_sync(lambda: fn(*args, **kw))

    health = await run(client.get_health)
    assert health["status"] == "ok"
    s = await run(client.create_session, workDir=str(workdir), name="from-ag-client", prompt="say:hello client")
    sid = s["id"]
    await daemon.wait_event(sid, "turn")
    listed = await run(client.list_sessions, work_dir=str(workdir), page_size=10)
    assert [x["id"] for x in listed["sessions"]] == [sid]
    assert (await run(client.get_session, sid))["name"] == "from-ag-client"
    assert (await run(client.get_session_health, sid))["alive"] is True
    msgs = (await run(client.read_messages, sid, page=1, page_size=50))["messages"]
    assert any(m["text"] == "hello client" for m in msgs)
    await run(client.send_message, sid, "tool:execute:Run:ls")
    await daemon.wait_event(sid, "permission.requested")
    await run(client.approve_permission, sid)
    turn2 = await daemon.wait_event(sid, "turn", match=lambda e: e.data["turn"] == 2)
    await run(client.send_message, sid, "tool:execute:Run:rm")
    # the new request, not the first one (events are replayed from the start of the session)
    await daemon.wait_event(sid, "permission.requested", after_id=turn2.id)
    await run(client.reject_permission, sid)
    perms = await run(client.get_session_permissions, sid)
    assert perms["permissionPolicy"] == []
    fork = await run(client.fork_session, sid, name="forked", prompt="recall")
    assert fork["forkedFrom"] == sid and fork["forkMethod"] == "acp" and fork["name"] == "forked"
    await daemon.wait_event(fork["id"], "turn")
    children = await run(client.spawn_subagent, sid, name="kid")
    assert children["parentId"] == sid
    await run(client.send_message, sid, "wait-for-cancel")
    await run(client.interrupt_session, sid)
    await run(client.escape_session, sid)
    await run(client.kill_session, sid)
    assert (await run(client.get_session, sid))["status"] == "killed"
    keys = await run(client.list_api_keys)
    assert keys == []
    key = await run(client.create_api_key, "from-client", "admin")
    assert key["key"].startswith("aegis_")
    assert (await run(client.verify_token, key["key"]))["valid"] is True
    # a key exists now, so authentication is on (as in the original): the client needs the token
    from aegis_python_client.client import AegisClientError

    with pytest.raises(AegisClientError):
        await run(client.list_sessions)
    authed = AegisClient(base_url=daemon.daemon.http_url, auth_token=key["key"])
    assert [k["name"] for k in await run(authed.list_api_keys)] == ["from-client"]
    await run(authed.delete_api_key, key["id"])


async def test_ag_client_errors_are_readable(daemon: DaemonHandle) -> None:
    from aegis_python_client import AegisClient
    from aegis_python_client.client import AegisClientError

    client = AegisClient(base_url=daemon.daemon.http_url)
    with pytest.raises(AegisClientError) as err:
        await trio.to_thread.run_sync(lambda: client.get_session("no-such-session"))
    assert err.value.status == 404
