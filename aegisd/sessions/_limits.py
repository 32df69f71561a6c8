"""The daemon's resource ceilings: open files (RLIMIT_NOFILE) and what they allow.

Each live session holds ``FDS_PER_SESSION`` descriptors in the daemon: the agent's stdin, stdout and stderr
pipes and trio's pidfd of the process. Measured by counting `/proc/<daemon pid>/fd` before and after creating
20 and 100 fake-agent sessions over HTTP (4.0 per session both times; the store opens and closes its files per
write, so they add nothing that lasts). ``RESERVE`` more are kept free for what every session needs now and
then (saving its record, appending its transcript, a client's connection): a create that would eat into them is
refused with 503 RESOURCE_EXHAUSTED before it starts anything, so running short never breaks a live session's
saves, the accept loops or the daemon's shutdown."""

from __future__ import annotations

import errno
import os
import resource

FDS_PER_SESSION = 4
BASELINE_FDS = 64  # the daemon with no session: ~14 at start, plus its store, clients, threads' wakeups
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.ENOSPC})


def reserve(limit: int) -> int:
    """Descriptors kept free for the daemon's own work: 32, plus 1/64 of the limit."""
    return 32 + limit // 64


def nofile() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of this process; RLIM_INFINITY as -1."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def raise_nofile() -> tuple[int, int, int]:
    """Raise the soft open-files limit to the hard one (capped by the kernel's fs.nr_open). Returns
    (previous soft, new soft, hard); the new soft is the previous when the raise was refused."""
    soft, hard = nofile()
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            target = int(open("/proc/sys/fs/nr_open").read())  # noqa: SIM115 - a tiny read at start
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft, hard
        return soft, target, hard
    return soft, soft, hard


def sessions_allowed(limit: int) -> int:
    """How many live sessions an open-files limit allows (RLIM_INFINITY: no ceiling from it)."""
    if limit == resource.RLIM_INFINITY or limit < 0:
        return 1 << 30
    return max(0, (limit - BASELINE_FDS - reserve(limit)) // FDS_PER_SESSION)


def open_fds() -> int | None:
    """Descriptors this process has open (None where /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        return None


def fd_shortage(live: int) -> tuple[int, int] | None:
    """(open, soft limit) when starting one more session would eat into the reserve; None when it fits.
    Counts /proc/self/fd only when the estimate comes near the limit (it costs ~1 µs per descriptor)."""
    soft, _ = nofile()
    if soft == resource.RLIM_INFINITY:
        return None
    need = FDS_PER_SESSION + reserve(soft)
    if BASELINE_FDS + (live + 1) * FDS_PER_SESSION * 2 + need < soft // 2:
        return None  # far from the ceiling even with a client connection per session
    used = open_fds()
    if used is None or used + need <= soft:
        return None
    return used, soft


def is_exhaustion(exc: BaseException) -> bool:
    """An error that says the machine or the daemon ran out of something (fds, processes, memory), not that the
    request was wrong: EMFILE, ENFILE, EAGAIN (fork), ENOMEM, ENOSPC; a thread that could not start."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in RESOURCE_ERRNOS
    return isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)
