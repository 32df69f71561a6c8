"""Pipelines: validation (pure) and runs through a real daemon with the fake agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.errors import ValidationError
from aegisd.pipelines import StageSpec, check_graph

from .conftest import DaemonHandle


def st(name: str, *deps: str) -> StageSpec:
    return StageSpec(name=name, prompt="say:x", dependsOn=list(deps))


def test_graph_checks() -> None:
    check_graph([st("a"), st("b", "a"), st("c", "a", "b")])
    with pytest.raises(ValidationError, match="unknown stage"):
        check_graph([st("a", "zzz")])
    with pytest.raises(ValidationError, match="cycle"):
        check_graph([st("a", "c"), st("b", "a"), st("c", "b")])
    with pytest.raises(ValidationError, match="itself"):
        check_graph([st("a", "a")])
    with pytest.raises(ValidationError, match="duplicate"):
        check_graph([st("a"), st("a")])


async def wait_pipeline(d: DaemonHandle, pid: str, timeout: float = 20) -> dict[str, Any]:
    await d.wait_event(pid, "pipeline", timeout=timeout, match=lambda e: e.data["status"] != "running")
    return (await d.http.get(f"/v1/pipelines/{pid}")).json()  # type: ignore[no-any-return]


async def test_dag_runs_in_order(daemon: DaemonHandle, workdir: Path) -> None:
    r = await daemon.http.post("/v1/pipelines", json={"name": "build", "workDir": str(workdir), "stages": [
        {"name": "plan", "prompt": "say:planned"},
        {"name": "code", "prompt": "say:coded", "dependsOn": ["plan"]},
        {"name": "test", "prompt": "say:tested", "dependsOn": ["plan"]},
        {"name": "ship", "prompt": "say:shipped", "dependsOn": ["code", "test"]}]})
    assert r.status_code == 201, r.text
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "completed"
    stages = {s["name"]: s for s in p["stages"]}
    assert all(s["status"] == "completed" and s["stopReason"] == "end_turn" for s in stages.values())
    assert stages["ship"]["startedAt"] >= max(stages["code"]["completedAt"], stages["test"]["completedAt"])
    assert stages["code"]["startedAt"] >= stages["plan"]["completedAt"]
    # each stage ran in its own session, closed when done, named after the pipeline
    sess = daemon.manager.records[stages["ship"]["sessionId"]]
    assert sess.name == "pipeline-build-ship" and sess.status.value == "completed"
    listed = (await daemon.http.get("/v1/pipelines")).json()
    assert [x["id"] for x in listed] == [p["id"]]


async def test_failure_retry_and_skip(daemon: DaemonHandle, workdir: Path) -> None:
    r = await daemon.http.post("/v1/pipelines", json={"name": "flaky", "workDir": str(workdir), "stages": [
        {"name": "a", "prompt": "crash:3", "retries": 1},
        {"name": "b", "prompt": "say:never", "dependsOn": ["a"]}]})
    p = await wait_pipeline(daemon, r.json()["id"])
    a, b = p["stages"]
    assert p["status"] == "failed" and a["status"] == "failed" and a["attempts"] == 2 and len(a["sessions"]) == 2
    assert "crashed" in a["error"] and b["status"] == "skipped" and b["sessionId"] is None
    r = await daemon.http.post("/v1/pipelines", json={"name": "refuse", "workDir": str(workdir), "stages": [
        {"name": "x", "prompt": "stop:refusal"}]})
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "failed" and "refusal" in p["stages"][0]["error"]


async def test_stage_timeout(daemon: DaemonHandle, workdir: Path) -> None:
    r = await daemon.http.post("/v1/pipelines", json={"name": "slow", "workDir": str(workdir), "stages": [
        {"name": "s", "prompt": "wait-for-cancel", "timeoutMs": 300}]})
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "failed" and "timed out" in p["stages"][0]["error"]


@pytest.mark.parametrize("body,msg", [
    ({"name": "x", "workDir": "WORK", "stages": []}, "stages"),
    ({"name": "x", "workDir": "WORK", "stages": [{"name": "a", "prompt": "p", "dependsOn": ["b"]}]}, "unknown"),
    ({"name": "x", "workDir": "/etc", "stages": [{"name": "a", "prompt": "p"}]}, "not under"),
])
async def test_bad_pipelines(daemon: DaemonHandle, workdir: Path, body: dict[str, Any], msg: str) -> None:
    if body["workDir"] == "WORK":
        body = {**body, "workDir": str(workdir)}
    r = await daemon.http.post("/v1/pipelines", json=body)
    assert r.status_code == 400 and msg in r.json()["message"]
    assert (await daemon.http.get("/v1/pipelines/nope")).status_code == 404


async def test_resumed_after_restart(daemon_factory: Any, workdir: Path) -> None:
    d1 = await daemon_factory()
    r = await d1.http.post("/v1/pipelines", json={"name": "long", "workDir": str(workdir), "stages": [
        {"name": "first", "prompt": "say:one"},
        {"name": "second", "prompt": "sleep:200;say:two", "dependsOn": ["first"]}]})
    pid = r.json()["id"]
    await d1.wait_event(None, "status", match=lambda e: e.data["status"] == "running"
                        and d1.manager.records[e.sessionId].name == "pipeline-long-second")
    d1.shutdown.set()
    with trio.fail_after(15):
        await d1.done.wait()  # type: ignore[attr-defined]
    d2 = await daemon_factory()
    p = await wait_pipeline(d2, pid)
    assert p["status"] == "completed"
    second = p["stages"][1]
    assert second["attempts"] == 2 and len(second["sessions"]) == 2
