"""Pipelines: validation (pure) and runs through a real daemon with the fake agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.errors import ValidationError
from aegisd.features.pipelines import StageSpec, check_graph

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


FLAKY_MAKEFILE = ("build:\n\t@echo built\n"
                  "test:\n\t@n=$$(cat .runs 2>/dev/null || echo 0); n=$$((n+1)); echo $$n > .runs; "
                  "if [ $$n -lt {passes_at} ]; then echo \"FAIL run $$n\"; exit 1; fi; echo \"ok run $$n\"\n")


async def test_verified_stage_gets_its_failures_back(daemon: DaemonHandle, workdir: Path) -> None:
    """A stage with verify: its turn ends, the project's checks run, the failure goes back to the same session
    as a prompt, and the stage completes once they pass."""
    (workdir / "Makefile").write_text(FLAKY_MAKEFILE.replace("{passes_at}", "2"))
    r = await daemon.http.post("/v1/pipelines", json={"name": "gate", "workDir": str(workdir), "stages": [
        {"name": "impl", "prompt": "say:implemented", "verify": True},
        {"name": "ship", "prompt": "say:shipped", "dependsOn": ["impl"]}]})
    assert r.status_code == 201, r.text
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "completed", p
    impl = next(s for s in p["stages"] if s["name"] == "impl")
    assert impl["fixes"] == 1 and impl["verification"]["ok"] is True and len(impl["sessions"]) == 1
    assert impl["verification"]["steps"] == [{"name": "build", "ok": True}, {"name": "test", "ok": True}]
    msgs = (await daemon.http.get(f"/v1/sessions/{impl['sessionId']}/transcript?limit=200")).json()["messages"]
    fix = [m["text"] for m in msgs if m["role"] == "user"][1]
    assert fix.startswith("The project's checks failed") and "$ make test" in fix and "FAIL run 1" in fix
    verdicts = [e for e in daemon.daemon.bus._rings[impl["sessionId"]] if e.event == "verification"]
    assert [e.data["status"] for e in verdicts] == ["running", "failed", "running", "passed"]


async def test_verified_stage_fails_when_fixes_run_out(daemon: DaemonHandle, workdir: Path) -> None:
    (workdir / "Makefile").write_text(FLAKY_MAKEFILE.replace("{passes_at}", "99"))
    r = await daemon.http.post("/v1/pipelines", json={"name": "gate", "workDir": str(workdir), "stages": [
        {"name": "impl", "prompt": "say:implemented", "verify": True, "verifyFixes": 1},
        {"name": "ship", "prompt": "say:shipped", "dependsOn": ["impl"]}]})
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "failed"
    impl, ship = p["stages"]
    assert impl["status"] == "failed" and impl["fixes"] == 1 and ship["status"] == "skipped"
    assert impl["error"] == "verification failed after 1 fix(es): 1 of 2 step(s) failed: test"
    assert (workdir / ".runs").read_text().strip() == "2"  # checked twice: after the turn, after the fix
    # criticalOnly skips the tests: the same project passes
    r = await daemon.http.post("/v1/pipelines", json={"name": "build-only", "workDir": str(workdir), "stages": [
        {"name": "impl", "prompt": "say:implemented", "verify": True, "verifyCriticalOnly": True}]})
    p = await wait_pipeline(daemon, r.json()["id"])
    assert p["status"] == "completed" and p["stages"][0]["verification"]["steps"] == [{"name": "build", "ok": True}]


async def test_shutdown_while_a_stage_starts_ends_promptly(daemon_factory: Any, workdir: Path) -> None:
    """A pipeline starting its next stage as the daemon stops: the stop still ends within its bound, and no agent
    is left running (a stage session created after the shutdown began used to keep it waiting)."""
    for _ in range(4):  # the window is narrow: a few rounds make it likely
        h = await daemon_factory()
        r = await h.http.post("/v1/pipelines", json={"name": "race", "workDir": str(workdir), "sequential": True,
                                                     "stages": [{"prompt": "say:one"}, {"prompt": "say:two"}]})
        assert r.status_code == 201, r.text
        first = await h.wait_event(None, "turn")
        h.shutdown.set()
        with trio.fail_after(10):
            await h.done.wait()  # type: ignore[attr-defined]
        pids = [p for p in (getattr(rec, "pid", None) for rec in h.manager.records.values()) if p]
        assert pids == [] and first.sessionId in h.manager.records
