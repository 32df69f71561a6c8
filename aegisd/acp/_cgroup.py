"""Per-session cgroups (cgroup v2): every process of a session lives in the session's own cgroup.

A process group or an environment marker is easy to leave (`setsid`, a double fork, `env -i`); a cgroup is not:
whatever an agent's tools start stays in it. That gives two guarantees the daemon relies on:
- the whole session dies at once when it ends, or when the daemon dies (`cgroup.kill`, Linux >= 5.14; the
  lifeline reaper kills the daemon's whole subtree when the daemon is SIGKILLed);
- a local caller (control socket, loopback HTTP) can be traced to the session it belongs to, from its pid
  (`/proc/<pid>/cgroup`) or from its socket (the cgroup id the kernel records on every socket).

Layout: ``<cgroup2 mount><the daemon's own cgroup>/aegis-<daemon pid>-<instance>/<session id>``. Creating it needs write
access to the daemon's cgroup: root, or a systemd unit with ``Delegate=yes``. No controller is enabled, so the
"no internal processes" rule does not apply and the daemon stays where it is. Where cgroups cannot be had, the
daemon falls back to process groups plus environment markers (see :mod:`._reaper`) and says so at start.

Blocking file I/O on cgroupfs is a kernel call that does not wait on disk, so it runs on the trio thread."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import structlog
import trio

log = structlog.get_logger("aegisd.cgroup")

_SH = "/bin/sh"
# Joins the cgroup (writing 0 moves the writer itself), then becomes the command: nothing runs outside it.
_JOIN = 'echo 0 > "$0" && exec "$@"'


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` in hybrid
    mode), or None."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split(" ")[4].replace("\\040", " "))
    except OSError:
        return None
    return None


def cgroup_of(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process (``/user.slice/…``), from the ``0::`` line of /proc/<pid>/cgroup."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def join_command(command: list[str], procs: Path) -> list[str]:
    """``command``, started inside the cgroup whose ``cgroup.procs`` is ``procs``."""
    return [_SH, "-c", _JOIN, str(procs), *command]


class SessionCgroups:
    """The daemon's cgroup subtree: one cgroup per session under ``root``."""

    def __init__(self, root: Path, relative: str) -> None:
        self.root = root  # absolute path in the cgroup filesystem
        self.relative = relative.rstrip("/")  # the same, as /proc/<pid>/cgroup shows it
        self._ids: dict[int, str] = {}  # cgroup id (the directory's inode) -> session id

    @classmethod
    def create(cls, instance: str) -> SessionCgroups | None:
        """The subtree for this daemon instance, or None (with the reason logged) where cgroups cannot be had."""
        mount = cgroup2_mount()
        own = cgroup_of()
        if mount is None or own is None:
            log.info("cgroup.unavailable", reason="no cgroup v2 hierarchy is mounted")
            return None
        relative = f"{own.rstrip('/')}/aegis-{os.getpid()}-{instance[:8]}"
        root = Path(str(mount) + relative)
        try:
            root.mkdir(mode=0o755)
            if not os.access(root / "cgroup.procs", os.W_OK) or not (root / "cgroup.kill").exists():
                os.rmdir(root)
                log.info("cgroup.unavailable", reason="cgroup.kill is missing (Linux < 5.14) or not writable")
                return None
        except OSError as exc:
            log.info("cgroup.unavailable", reason=f"cannot create {root}: {exc.strerror or exc} (needs root, or "
                     "a systemd unit with Delegate=yes)")
            return None
        cls._sweep_stale(root.parent, keep=root.name)
        log.info("cgroup.ready", root=str(root))
        return cls(root, relative)

    @staticmethod
    def _sweep_stale(parent: Path, *, keep: str) -> None:
        """Remove the empty subtrees of daemons that died together with their reaper. A live daemon's subtree is
        left alone, empty or not (its name carries its pid); a dead one's still holding processes too."""
        try:
            entries = [e for e in parent.iterdir() if e.name.startswith("aegis-") and e.name != keep]
        except OSError:
            return
        for tree in entries:
            pid = tree.name.split("-")[1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            for child in [c for c in tree.iterdir() if c.is_dir()] if tree.is_dir() else []:
                _rmdir(child)
            _rmdir(tree)

    # ---- one session ---------------------------------------------------------------------------
    def path(self, session_id: str) -> Path:
        return self.root / session_id

    def make(self, session_id: str) -> Path:
        """The session's cgroup (created if needed); returns its ``cgroup.procs``."""
        path = self.path(session_id)
        self.root.mkdir(mode=0o755, exist_ok=True)  # put back if someone removed it while it was empty
        path.mkdir(mode=0o755, exist_ok=True)
        self._ids[path.stat().st_ino] = session_id
        return path / "cgroup.procs"

    def pids(self, session_id: str) -> list[int]:
        try:
            text = (self.path(session_id) / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def populated(self, session_id: str) -> bool:
        try:
            text = (self.path(session_id) / "cgroup.events").read_text()
        except OSError:
            return False
        return "populated 1" in text

    def signal(self, session_id: str, sig: int) -> None:
        for pid in self.pids(session_id):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    async def kill(self, session_id: str, *, timeout: float = 5.0) -> None:
        """SIGKILL every process of the session and remove its cgroup once it is empty."""
        path = self.path(session_id)
        if not path.exists():
            return
        try:
            (path / "cgroup.kill").write_text("1")
        except OSError as exc:
            log.warning("cgroup.kill_failed", session_id=session_id, error=str(exc))
            self.signal(session_id, signal.SIGKILL)
        with trio.move_on_after(timeout):
            while self.populated(session_id):  # exits are asynchronous; cgroup.events has no trio-friendly wait
                await trio.sleep(0.005)
        self.remove(session_id)

    def remove(self, session_id: str) -> None:
        path = self.path(session_id)
        try:
            ino = path.stat().st_ino
        except OSError:
            return
        if _rmdir(path):
            self._ids.pop(ino, None)

    # ---- who is calling ------------------------------------------------------------------------
    def session_of_pid(self, pid: int) -> str | None:
        path = cgroup_of(pid)
        prefix = self.relative + "/"
        if path is None or not path.startswith(prefix):
            return None
        return path[len(prefix):].split("/", 1)[0] or None

    def session_of_cgroup_id(self, cgroup_id: int) -> str | None:
        return self._ids.get(cgroup_id)

    # ---- the whole subtree ---------------------------------------------------------------------
    async def close(self) -> None:
        """At daemon stop: kill whatever is left and remove the subtree."""
        for child in [c for c in self.root.iterdir() if c.is_dir()] if self.root.exists() else []:
            await self.kill(child.name)
        _rmdir(self.root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdir(path: Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
            log.warning("cgroup.rmdir_failed", path=str(path), error=str(exc))
        return exc.errno == errno.ENOENT
