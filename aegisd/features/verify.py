"""Verification: run the project's own checks (type check, build, tests) in a session's workDir and say
whether the agent's work holds up. Steps come from the config (`verification.steps`) or are found from the
project's files; each runs in its own process group with a time limit, and its output's tail is kept."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from aegisd.acp import Lifeline, agent_environment
from aegisd.acp._cgroup import SessionCgroups, join_command
from aegisd.acp._groups import end_group
from aegisd.bus import EventBus
from aegisd.core.config import VerificationConfig
from aegisd.core.errors import Conflict, ValidationError
from aegisd.core.events import Verification
from aegisd.core.models import SessionRecord
from aegisd.core.sections import Step, parse_steps
from aegisd.sessions import SessionManager

OUTPUT_TAIL = 8_000  # characters of output kept per step



def _make_targets(makefile: Path) -> set[str]:
    try:
        text = makefile.read_text(errors="replace")
    except OSError:
        return set()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def detect(work_dir: Path) -> list[Step]:
    """The checks a project's files announce: npm scripts (and tsc), make targets, Cargo, Go, pytest."""
    steps: list[Step] = []
    pkg = work_dir / "package.json"
    if pkg.is_file():
        try:
            scripts = json.loads(pkg.read_text()).get("scripts") or {}
        except (OSError, ValueError, AttributeError):
            scripts = {}
        if (work_dir / "tsconfig.json").is_file() and "typecheck" not in scripts \
                and (work_dir / "node_modules" / ".bin" / "tsc").exists():
            steps.append(Step("typecheck", ["node_modules/.bin/tsc", "--noEmit"]))
        for name, script in (("typecheck", "typecheck"), ("build", "build"), ("test", "test")):
            if script in scripts:
                steps.append(Step(name, ["npm", "run", "--silent", script]))
        return steps
    targets = _make_targets(work_dir / "Makefile") if (work_dir / "Makefile").is_file() else set()
    if targets & {"build", "test", "check"}:
        for name, target in (("build", "build"), ("test", "test"), ("test", "check")):
            if target in targets and not any(s.name == name for s in steps):
                steps.append(Step(name, ["make", target]))
        return steps
    if (work_dir / "Cargo.toml").is_file():
        return [Step("build", ["cargo", "build", "--quiet"]), Step("test", ["cargo", "test", "--quiet"])]
    if (work_dir / "go.mod").is_file():
        return [Step("build", ["go", "build", "./..."]), Step("test", ["go", "test", "./..."])]
    if any((work_dir / f).is_file() for f in ("pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini")) \
            or (work_dir / "tests").is_dir():
        venv_python = work_dir / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else "python3"
        return [Step("test", [python, "-m", "pytest", "-q"])]
    return steps


async def run_step(step: Step, work_dir: Path, env: dict[str, str], lifeline: Any = None,
                   cgroup_procs: Path | None = None) -> dict[str, Any]:
    """Run one step; with ``cgroup_procs``, inside that cgroup (the session's: a step runs the project's code,
    which the agent may have written, so it gets no more than the agent)."""
    started = time.monotonic()
    out: dict[str, Any] = {"name": step.name, "command": shlex.join(step.argv()), "ok": False}
    proc: trio.Process | None = None
    chunks: list[bytes] = []
    size = 0
    argv = step.argv()
    try:
        if cgroup_procs is not None:
            if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
                raise FileNotFoundError(errno.ENOENT, "no such executable")
            argv = join_command(argv, cgroup_procs)
        proc = await trio.lowlevel.open_process(argv, cwd=str(work_dir), env=env, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                start_new_session=True)
    except OSError as exc:
        out.update(exitCode=None, error=f"cannot start {step.argv()[0]}: {exc.strerror or exc}",
                   durationMs=int((time.monotonic() - started) * 1000))
        return out
    try:
        if lifeline is not None:
            await lifeline.register(proc.pid)
        assert proc.stdout is not None
        with trio.move_on_after(step.timeoutMs / 1000) as scope:
            async for chunk in proc.stdout:
                chunks.append(bytes(chunk))
                size += len(chunk)
                while size > OUTPUT_TAIL * 4 and len(chunks) > 1:  # keep memory bounded on chatty builds
                    size -= len(chunks.pop(0))
            await proc.wait()
        if scope.cancelled_caught:
            out["error"] = f"timed out after {step.timeoutMs // 1000} s"
        else:
            code = proc.returncode or 0
            out["ok"] = code == 0
            if code:
                out["error"] = f"exited with {code}" if code > 0 else f"killed by signal {-code}"
    finally:
        await end_group(proc, lifeline)  # what the step started dies with it
    out["exitCode"] = proc.returncode
    out["durationMs"] = int((time.monotonic() - started) * 1000)
    out["output"] = b"".join(chunks).decode(errors="replace")[-OUTPUT_TAIL:]
    return out


def summarize(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "nothing to verify: no build or test command found (configure verification.steps)"
    failed = [s["name"] for s in steps if not s["ok"]]
    if not failed:
        return f"all {len(steps)} step(s) passed: " + ", ".join(s["name"] for s in steps)
    return f"{len(failed)} of {len(steps)} step(s) failed: " + ", ".join(failed)


class Verifier:
    """Runs a session's checks, one verification at a time per session, each step in the session's cgroup."""

    def __init__(self, *, config: VerificationConfig, bus: EventBus, sessions: SessionManager, environ: dict[str, str],
                 lifeline: Lifeline, cgroups: Callable[[], SessionCgroups | None] = lambda: None) -> None:
        self.config = config
        self.bus = bus
        self.sessions = sessions
        self.environ = environ
        self.lifeline = lifeline
        self._cgroups = cgroups
        self.running: set[str] = set()  # sessions whose verification is running

    async def run(self, rec: SessionRecord, *, critical_only: bool | None = None) -> dict[str, Any]:
        """Run the checks for a session's workDir, publishing `verification` events on the session (running,
        then passed or failed). A failed typecheck or build stops the run. One at a time per session
        (Conflict)."""
        cfg = self.config
        work_dir = Path(rec.workDir)
        if not work_dir.is_dir():
            raise ValidationError(f"the session's workDir {rec.workDir} no longer exists")
        steps = parse_steps(cfg.steps) or detect(work_dir)
        critical = cfg.criticalOnly if critical_only is None else critical_only
        if critical:
            steps = [s for s in steps if s.is_critical()]
        if rec.id in self.running:
            raise Conflict(f"a verification of session {rec.id} is already running")
        self.running.add(rec.id)
        self.bus.publish(rec.id, Verification(status="running", steps=[s.name for s in steps]))
        started = time.monotonic()
        results: list[dict[str, Any]] = []
        cgroups = self._cgroups()
        try:
            # marked like the session's agent: the reaper finds even a step's setsid escapees when the daemon dies
            env = agent_environment(self.environ, markers=self.sessions.markers(rec.id))
            procs = cgroups.make(rec.id) if cgroups is not None else None
            for step in steps:
                res = await run_step(step, work_dir, env, self.lifeline, procs)
                results.append(res)
                if not res["ok"] and step.is_critical():
                    break  # a failed build: its tests would only fail too
        finally:
            self.running.discard(rec.id)
            if cgroups is not None and rec.id not in self.sessions.runners:
                with trio.CancelScope(shield=True):
                    await cgroups.kill(rec.id)  # an ended session's cgroup exists only for its checks
        skipped = [s.name for s in steps[len(results):]]
        ok = bool(results) and all(r["ok"] for r in results)
        summary = summarize(results) + (f"; skipped after it: {', '.join(skipped)}" if skipped else "")
        out: dict[str, Any] = {"ok": ok, "steps": results, "skipped": skipped,
                               "totalDurationMs": int((time.monotonic() - started) * 1000), "summary": summary,
                               "criticalOnly": critical}
        self.bus.publish(rec.id, Verification(
            status="passed" if ok else "failed", ok=ok, summary=summary, totalDurationMs=out["totalDurationMs"],
            steps=[{k: r.get(k) for k in ("name", "ok", "exitCode", "durationMs")} for r in results]))
        return out


def fix_prompt(result: dict[str, Any], *, tail: int = 3000) -> str:
    """The prompt that hands failed checks back to the agent."""
    parts = [f"The project's checks failed after your changes ({result['summary']})."]
    for step in result["steps"]:
        if not step["ok"]:
            output = (step.get("output") or "").strip()[-tail:]
            parts.append(f"$ {step['command']}\n({step.get('error') or 'failed'})\n{output}")
    parts.append("Fix the code so that these checks pass, then stop.")
    return "\n\n".join(parts)
