"""Start-up failures in one line each: what went wrong and which setting changes it (tracebacks only at debug)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from aegisd.core.errors import AegisError, ValidationError

if TYPE_CHECKING:
    from aegisd.core.config import Config


def leaves(exc: BaseException) -> list[BaseException]:
    """The real errors inside (nested) exception groups, cancellations left out."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [] if isinstance(exc, trio.Cancelled) else [exc]


def explain(exc: BaseException, config: Config) -> tuple[str, int]:
    """(one line for a person, exit code) for an error that stopped the daemon."""
    found = leaves(exc) or [exc]
    first = next((e for e in found if isinstance(e, (AegisError, OSError))), found[0])
    if isinstance(first, AegisError):
        return first.message, 2 if isinstance(first, ValidationError) else 1
    where = f"{config.host}:{config.port}"
    source = config.sources.get("port", "default")
    if isinstance(first, OSError):
        if first.errno == errno.EADDRINUSE:
            return (f"port {config.port} on {config.host} is already in use by another program (port from "
                    f"{source}): stop that program, or choose another port with AEGIS_PORT, --port or `port:` in "
                    "the config"), 1
        if first.errno == errno.EADDRNOTAVAIL:
            return (f"cannot listen on {where}: {config.host} is not an address of this machine (set AEGIS_HOST "
                    "or `host:`; 127.0.0.1 is the default)"), 1
        if first.errno == errno.EACCES and not first.filename:
            return (f"no permission to listen on {where} (ports below 1024 need privileges): set AEGIS_PORT or "
                    "`port:` to 1024 or above"), 1
        name = str(first.filename or "")
        if name and _under(name, config.socket_path.parent) and not _under(name, config.state_path):
            return (f"cannot use the control socket {config.socket_path}: {first.strerror} ({name}; set "
                    "AEGIS_SOCKET or `socket:` to a path in a directory you own)"), 1
        if name and _under(name, config.state_path):
            return (f"cannot use the state directory {config.state_path}: {first.strerror} ({name}; set "
                    "AEGIS_STATE_DIR or `stateDir:` to a directory you own)"), 1
        if first.errno == errno.ENOSPC:
            return f"the disk holding {config.state_path} is full ({first.filename or 'while writing'})", 1
        what = f" ({first.filename})" if first.filename else ""
        return f"{first.strerror or first}{what}", 1
    return (f"internal error: {type(first).__name__}: {first} (run `aegisd --debug` for the traceback, and "
            "please report it)"), 1


def _under(name: str, root: Path) -> bool:
    path = Path(name)
    return path == root or root in path.parents
