"""POST /v1/sessions/{id}/verify: the project's own checks run for real in the session's workDir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.config import load_config
from aegisd.core.errors import ValidationError

from .conftest import DaemonHandle, pid_alive


def makefile(workdir: Path, build: str = "@echo building", test: str = "@echo 3 passed") -> None:
    (workdir / "Makefile").write_text(f"build:\n\t{build}\ntest:\n\t{test}\n")


async def test_passing_project(daemon: DaemonHandle, workdir: Path) -> None:
    makefile(workdir)
    s = await daemon.create(workdir)
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/verify", timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and [x["name"] for x in body["steps"]] == ["build", "test"]
    assert [x["command"] for x in body["steps"]] == ["make build", "make test"]
    assert "3 passed" in body["steps"][1]["output"] and body["steps"][1]["exitCode"] == 0
    assert body["summary"] == "all 2 step(s) passed: build, test"
    ev = await daemon.wait_event(s["id"], "verification", match=lambda e: e.data["status"] != "running")
    assert ev.data["ok"] is True and [x["name"] for x in ev.data["steps"]] == ["build", "test"]
    audit = (await daemon.http.get("/v1/audit?action=session.verify")).json()["records"]
    assert audit[0]["detail"]["ok"] is True


async def test_failures_are_422_with_the_result(daemon: DaemonHandle, workdir: Path) -> None:
    makefile(workdir, test="@echo 'assert 1 == 2 failed'; exit 3")
    s = await daemon.create(workdir)
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/verify", timeout=60)
    assert r.status_code == 422 and r.json()["code"] == "VERIFICATION_FAILED"
    body = r.json()
    assert body["ok"] is False and body["error"] == "1 of 2 step(s) failed: test"
    failed = body["steps"][1]
    assert failed["exitCode"] == 2 and "assert 1 == 2 failed" in failed["output"]  # make reports 2
    assert body["details"]["steps"] == body["steps"]
    # a build that fails stops there: its tests would say nothing new
    makefile(workdir, build="@echo 'syntax error'; exit 1")
    body = (await daemon.http.post(f"/v1/sessions/{s['id']}/verify", timeout=60)).json()
    assert [x["name"] for x in body["steps"]] == ["build"] and body["skipped"] == ["test"]
    assert "skipped after it: test" in body["summary"]
    # criticalOnly keeps type checks and builds only
    makefile(workdir)
    body = (await daemon.http.post(f"/v1/sessions/{s['id']}/verify", json={"criticalOnly": True})).json()
    assert [x["name"] for x in body["steps"]] == ["build"] and body["criticalOnly"] is True


async def test_nothing_to_verify_and_bad_input(daemon: DaemonHandle, workdir: Path) -> None:
    s = await daemon.create(workdir)
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/verify")
    assert r.status_code == 422 and "nothing to verify" in r.json()["error"]
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/verify", json={"steps": ["x"]})
    assert r.status_code == 400
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/verify", json={"criticalOnly": "yes"})
    assert r.status_code == 400
    assert (await daemon.http.post("/v1/sessions/nope-nope/verify")).status_code == 404


async def test_configured_step_times_out_and_its_tree_dies(daemon_factory: Any, workdir: Path,
                                                           nursery: trio.Nursery) -> None:
    pidfile = workdir / "child.pid"
    d = await daemon_factory(verification={"steps": [
        {"name": "slow", "command": ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], "timeoutMs": 1000}]})
    s = await d.create(workdir)
    results: list[Any] = []
    done = trio.Event()

    async def verify() -> None:
        results.append(await d.http.post(f"/v1/sessions/{s['id']}/verify", timeout=60))
        done.set()
    nursery.start_soon(verify)
    ev = await d.wait_event(s["id"], "verification")
    assert ev.data == {"status": "running", "steps": ["slow"]}
    # a second verification while the first runs is refused
    r = await d.http.post(f"/v1/sessions/{s['id']}/verify")
    assert r.status_code == 409
    ev = await d.wait_event(s["id"], "verification", after_id=ev.id)
    assert ev.data["status"] == "failed" and ev.data["ok"] is False
    with trio.fail_after(10):
        await done.wait()
    body = results[0].json()
    assert results[0].status_code == 422 and body["steps"][0]["error"] == "timed out after 1 s"
    assert not pid_alive(int(pidfile.read_text()))  # the step's own children were killed too


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
async def test_npm_scripts_are_found(daemon: DaemonHandle, workdir: Path) -> None:
    (workdir / "package.json").write_text(json.dumps({"name": "p", "version": "1.0.0", "scripts": {
        "build": "node -e \"console.log('built')\"", "test": "node -e \"console.log('tested')\""}}))
    s = await daemon.create(workdir)
    body = (await daemon.http.post(f"/v1/sessions/{s['id']}/verify", timeout=120)).json()
    assert [(x["name"], x["ok"]) for x in body["steps"]] == [("build", True), ("test", True)], body
    assert "tested" in body["steps"][1]["output"]


def test_bad_verification_config(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="verification"):
        load_config(env={}, overrides={"verification": {"steps": [{"name": "x", "command": []}]}})
    with pytest.raises(ValidationError, match="timeoutMs"):
        load_config(env={}, overrides={"verification": {"steps": [{"name": "x", "command": "true",
                                                                   "timeoutMs": 5}]}})
    f = tmp_path / "config.yaml"
    f.write_text("verificationProtocol:\n  criticalOnly: true\n")
    assert load_config(env={}, config_path=f).verification.criticalOnly is True  # the original's name
