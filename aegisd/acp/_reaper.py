"""The lifeline reaper: a tiny process that outlives a dying daemon just long enough to kill its agents.

Run as ``python -I -S _reaper.py <instance-token> <grace-seconds>`` with a pipe on stdin whose only write end
the daemon holds. The kernel closes that pipe however the daemon dies (SIGKILL included); on EOF the reaper
SIGTERMs every process group the daemon registered and every process whose environment carries
``AEGIS_DAEMON_INSTANCE=<token>`` (which catches grandchildren that left their process group with setsid),
waits the grace period, SIGKILLs what is left, kills the daemon's cgroup subtree whole if it has one (which
catches what left both, e.g. ``setsid env -i``; see :mod:`._cgroup`), and exits.

Stdin protocol, one line each: ``+<pgid>`` (an agent group started), ``-<pgid>`` (it ended), ``c<path>`` (the
daemon's cgroup subtree).

This file is also imported by the daemon for :func:`find_marked` and :func:`kill_marked` (stdlib only).
"""

from __future__ import annotations

import os
import signal
import sys
import time

MARKER = "AEGIS_DAEMON_INSTANCE"
SESSION_MARKER = "AEGIS_SESSION_ID"


def find_marked(markers: dict[str, str]) -> list[int]:
    """Pids (other than ours) whose environment contains every ``name=value`` of ``markers``."""
    needles = [f"{k}={v}".encode() for k, v in markers.items()]
    me = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if all(n in env for n in needles):
            found.append(int(entry))
    return found


def _signal_all(pgids: set[int], pids: list[int], sig: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_marked(markers: dict[str, str], pgids: set[int], grace: float) -> int:
    """SIGTERM the groups and the marked processes, wait up to ``grace`` s, SIGKILL the rest.
    Blocking (polls /proc); returns how many processes were found."""
    pids = find_marked(markers)
    if not pids and not any(_group_alive(g) for g in pgids):
        return 0
    _signal_all(pgids, pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        pids = [p for p in find_marked(markers) if _alive(p)]
        if not pids and not any(_group_alive(g) for g in pgids):
            return len(pids)
        time.sleep(0.02)
    pids = find_marked(markers)
    _signal_all(pgids, pids, signal.SIGKILL)
    return len(pids)


def main(argv: list[str]) -> int:
    token, grace = argv[1], float(argv[2])
    # Ignore terminal signals: a Ctrl-C aimed at the daemon must not take the reaper out first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pgids: set[int] = set()
    cgroups: list[str] = []
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        try:
            if line.startswith(b"+"):
                pgids.add(int(line[1:]))
            elif line.startswith(b"-"):
                pgids.discard(int(line[1:]))
            elif line.startswith(b"c"):
                cgroups.append(line[1:].decode())
        except ValueError:
            continue
    kill_marked({MARKER: token}, pgids, grace)
    for tree in cgroups:
        kill_cgroup_tree(tree)
    return 0


def kill_cgroup_tree(tree: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in a cgroup subtree, wait until it is empty, remove its directories."""
    try:
        with open(os.path.join(tree, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(tree, "cgroup.events")) as f:
                if "populated 0" in f.read():
                    break
        except OSError:
            break
        time.sleep(0.01)
    for root, dirs, _files in os.walk(tree, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(tree)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
