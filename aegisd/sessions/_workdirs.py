"""The workDir allow-list: a session's directory must resolve (realpath: no `..` tricks, no symlink escape)
under one of `allowedWorkDirs`. Default: $HOME and the daemon's cwd, never /tmp or /var/tmp. The list is
re-read from the config file when that file changes, so edits apply without a restart.

Whatever the list says, a workDir is never the daemon's state dir, inside it or a directory holding it (an agent
works on its workDir freely: it must not get the daemon's keys, audit log and transcripts), never the daemon's
config directory or inside it, and never a well-known secret directory (~/.ssh, ~/.gnupg, ~/.aws, …)."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from aegisd.core.config import Config, read_config_file
from aegisd.core.errors import InvalidWorkDir

_NEVER_BY_DEFAULT = ("/tmp", "/var/tmp")
# under $HOME: never a workDir, nor inside one of them
SECRET_DIRS = (".ssh", ".gnupg", ".aws", ".config/gcloud", ".azure", ".kube", ".docker", ".config/gh",
               ".password-store", ".aegis")


def _has_dotdot(raw: str) -> bool:
    candidate = raw
    for _ in range(5):  # raw, then up to 4 rounds of percent-decoding
        parts = candidate.replace("\\", "/").split("/")
        if ".." in parts:
            return True
        decoded = urllib.parse.unquote(candidate)
        if decoded == candidate:
            break
        candidate = decoded
    return False


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class WorkDirPolicy:
    def __init__(self, config: Config, *, cwd: str | None = None) -> None:
        self._config = config
        self._cwd = cwd or os.getcwd()
        self._state = os.path.realpath(config.state_path)
        home = os.path.expanduser("~")
        secret = {os.path.realpath(os.path.join(home, d)) for d in SECRET_DIRS}
        if config.configPath and os.path.basename(config.configPath) != "aegis.config.json":
            secret.add(os.path.realpath(os.path.dirname(config.configPath)))  # .aegis/, not a project's root
        self._secret = sorted(secret)
        self._file = Path(config.configPath) if config.configPath else None
        self._env_override = config.sources.get("allowedWorkDirs", "").startswith(("env:", "flag"))
        self._mtime: float | None = None
        self._roots = self._resolve(config.allowedWorkDirs)
        if self._file is not None:
            self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self._file.stat().st_mtime if self._file else None
        except OSError:
            return None

    def _resolve(self, entries: tuple[str, ...] | list[str]) -> list[str]:
        if entries:
            roots = [os.path.realpath(os.path.expanduser(e)) for e in entries]
        else:
            defaults = [os.path.expanduser("~"), self._cwd]
            roots = [os.path.realpath(d) for d in defaults]
            roots = [r for r in roots if not any(_within(r, t) or _within(t, r) for t in _NEVER_BY_DEFAULT)
                     and r != "/"]
        return sorted(set(roots))

    def _maybe_reload(self) -> None:
        if self._file is None or self._env_override:
            return
        mtime = self._stat()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            data = read_config_file(self._file)
        except Exception:  # noqa: BLE001 - keep the last good list on a broken edit
            return
        entries = data.get("allowedWorkDirs") or []
        if isinstance(entries, list) and all(isinstance(e, str) for e in entries):
            self._roots = self._resolve(entries)

    @property
    def roots(self) -> list[str]:
        self._maybe_reload()
        return list(self._roots)

    def validate(self, raw: str) -> str:
        """The realpath of ``raw`` if it is allowed; raises :class:`InvalidWorkDir` with the reason."""
        if not isinstance(raw, str) or not raw.strip():
            raise InvalidWorkDir("workDir is required")
        if "\0" in raw:
            raise InvalidWorkDir("workDir contains a NUL byte")
        if _has_dotdot(raw):
            raise InvalidWorkDir("workDir must not contain '..' segments")
        expanded = os.path.expanduser(raw)
        if not os.path.isabs(expanded):
            raise InvalidWorkDir(f"workDir must be an absolute path: {raw}")
        real = os.path.realpath(expanded)
        if not os.path.exists(real):
            raise InvalidWorkDir(f"workDir does not exist: {raw}")
        if not os.path.isdir(real):
            raise InvalidWorkDir(f"workDir is not a directory: {raw}")
        if _within(real, self._state) or _within(self._state, real):
            raise InvalidWorkDir(f"workDir {real} would give the agent the daemon's state directory "
                                 f"({self._state}: keys, audit log, transcripts); choose a project directory")
        for secret in self._secret:
            if _within(real, secret):
                raise InvalidWorkDir(f"workDir {real} is inside {secret}, which holds secrets or the daemon's "
                                     "configuration; choose a project directory")
        roots = self.roots
        if not any(_within(real, root) for root in roots):
            raise InvalidWorkDir(
                f"workDir {real} is not under an allowed directory ({', '.join(roots) or 'none'}); "
                "add it to allowedWorkDirs in .aegis/config.yaml or AEGIS_ALLOWED_WORK_DIRS",
                details={"allowedWorkDirs": roots})
        return real
