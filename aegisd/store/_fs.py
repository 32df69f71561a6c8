"""Small filesystem helpers shared by every file the daemon persists."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tmp(path: Path, data: bytes) -> Path:
    """The first half of an atomic replace: ``data`` in a 0600 tmp file beside ``path``, fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never a mix: write a
    0600 tmp file beside it, fsync, rename, fsync the directory."""
    os.replace(write_tmp(path, data), path)
    fsync_dir(path.parent)
