"""One way a session comes to be (aegisd/ops/_sessions.py create_session): session.create, session.fork and
pipeline stages all leave the same `session.create` audit record and go through the same checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import DaemonHandle
from .test_pipelines import wait_pipeline


async def created(d: DaemonHandle) -> dict[str, dict[str, Any]]:
    """The session.create audit records, by session id."""
    return {r["sessionId"]: r for r in await d.daemon.services.audit.read_all() if r.get("action") == "session.create"}


async def test_a_pipeline_stage_and_a_fork_leave_the_create_audit_record(daemon: DaemonHandle,
                                                                         workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="say:hi")
    assert (await created(daemon))[s["id"]]["detail"]["workDir"] == s["workDir"]
    await daemon.wait_event(s["id"], "turn")

    r = await daemon.http.post(f"/v1/sessions/{s['id']}/fork", json={"name": "branch"})
    assert r.status_code == 201, r.text
    fork = (await created(daemon))[r.json()["id"]]
    assert fork["detail"]["forkedFrom"] == s["id"] and fork["detail"]["workDir"] == s["workDir"]
    assert fork["detail"]["agent"] == s["agent"] and fork["actor"] == "local"

    r = await daemon.http.post("/v1/pipelines", json={"name": "p", "workDir": str(workdir), "stages": [
        {"name": "only", "prompt": "say:done"}]})
    assert r.status_code == 201, r.text
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "completed", p
    stage = (await created(daemon))[p["stages"][0]["sessionId"]]
    assert stage["actor"] == f"pipeline:{p['id']}"
    assert stage["detail"]["pipelineId"] == p["id"] and stage["detail"]["stage"] == "only"
    assert stage["detail"]["workDir"] == p["workDir"] and stage["detail"]["ownerKeyId"] is None
