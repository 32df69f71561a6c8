"""The workDir allow-list: a session's directory must resolve (realpath: no `..` tricks, no symlink escape)
under one of `allowedWorkDirs`. Default: $HOME and the daemon's cwd, never /tmp or /var/tmp. The list is
re-read from the config file when that file changes, so edits apply without a restart."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from .config import Config, read_config_file
from .errors import InvalidWorkDir

_NEVER_BY_DEFAULT = ("/tmp", "/var/tmp")


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
        roots = self.roots
        if not any(_within(real, root) for root in roots):
            raise InvalidWorkDir(
                f"workDir {real} is not under an allowed directory ({', '.join(roots) or 'none'}); "
                "add it to allowedWorkDirs in .aegis/config.yaml or AEGIS_ALLOWED_WORK_DIRS",
                details={"allowedWorkDirs": roots})
        return real
