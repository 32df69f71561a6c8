"""`ag list` against `python -c pass` of the same venv, interleaved (issue 14's CLI target: ≤ 3×).

Starts aegisd (fake agent, temporary state dir) with a few sessions, then alternates the two commands
(``--runs`` each, default 20) so both see the same machine load, and prints min/median/max of each one's wall
time and of the per-pair ratio. Usage: .venv/bin/python scripts/cli_startup.py [--runs N] [--sessions N]"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = Path(sys.executable)
AG = VENV_PY.parent / "ag"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU (user + system of the child) is what a loaded machine blurs least."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ag-cli-"))
    work = tmp / "w"
    work.mkdir()
    env = {**os.environ, "AEGIS_STATE_DIR": str(tmp / "state"), "AEGIS_SOCKET": str(tmp / "s.sock"),
           "AEGIS_PORT": "0", "AEGIS_ALLOWED_WORK_DIRS": str(tmp), "HOME": str(tmp),
           "AEGIS_AGENT_COMMAND": f"{VENV_PY} {ROOT / 'tests' / 'fake_agent.py'}",
           "FAKE_ACP_STATE_DIR": str(tmp / "fake"), "AEGIS_LOG_FORMAT": "json", "NO_COLOR": "1"}
    daemon = subprocess.Popen([str(VENV_PY), "-m", "aegisd"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd=tmp)
    try:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            if b'"aegisd.ready"' in line:
                break
        for _ in range(args.sessions):
            subprocess.run([str(AG), "create", "--cwd", str(work), "--json"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        listed = subprocess.run([str(AG), "list", "--json"], env=env, check=True, capture_output=True)
        assert len(json.loads(listed.stdout)) >= args.sessions or listed.stdout, listed
        base_cmd, ag_cmd = [str(VENV_PY), "-c", "pass"], [str(AG), "list"]
        for _ in range(3):  # warm the page cache and .pyc files
            timed(base_cmd, env)
            timed(ag_cmd, env)
        base: list[tuple[float, float]] = []
        ag: list[tuple[float, float]] = []
        for i in range(args.runs):  # alternate, and alternate which goes first
            pair = [(base, base_cmd), (ag, ag_cmd)]
            for out, cmd in pair if i % 2 == 0 else pair[::-1]:
                out.append(timed(cmd, env))

        def fmt(xs: list[float], unit: str = "ms") -> str:
            k = 1000 if unit == "ms" else 1
            return (f"min {min(xs) * k:.1f} / median {statistics.median(xs) * k:.1f} / max {max(xs) * k:.1f}"
                    + (" ms" if unit == "ms" else "×"))
        print(f"runs: {args.runs} each, interleaved; {args.sessions} sessions listed; load {os.getloadavg()[0]:.1f}")
        for i, what in ((0, "wall"), (1, "CPU")):
            b, a = [x[i] for x in base], [x[i] for x in ag]
            print(f"{what:4}  python -c pass : {fmt(b)}")
            print(f"{what:4}  ag list        : {fmt(a)}")
            print(f"{what:4}  ratio          : {fmt([y / x for x, y in zip(b, a, strict=True)], 'x')}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


if __name__ == "__main__":
    main()
