"""Starting aegisd in the background (`ag run`) and waiting for it to exit (`ag stop`). Apart from `_conn`, which
every command needs, so that `ag list` does not load (nor compile) this."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from aegisctl._conn import connect
from aegisctl.client import Client, ClientError, ConnectError, state_dir


def systemd_unit_installed() -> bool:
    import shutil

    unit = Path(os.path.expanduser("~/.config/systemd/user/aegisd.service"))
    return unit.exists() and shutil.which("systemctl") is not None


def start_background(*, port: int | None = None, quiet: bool = False, timeout: float = 30.0) -> dict[str, Any]:
    """Start aegisd detached (or through `systemctl --user` when the unit is installed) and wait until it
    answers. Returns the daemon's `hello`. With a port, aegisd is started on that port (the unit has its own)."""
    import subprocess

    log_path = state_dir() / "aegisd.log"
    if systemd_unit_installed() and not port:
        subprocess.run(["systemctl", "--user", "start", "aegisd"], check=False)
        proc = None
    else:
        state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        args = [sys.executable, "-m", "aegisd"]
        if port:
            args += ["--port", str(port)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            client = connect(port=port)
            hello: dict[str, Any] = client.call("hello")
            client.close()
            return hello
        except ConnectError:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:] if log_path.exists() else []
            raise ConnectError("aegisd exited at start (exit code "
                               f"{proc.returncode}); see {log_path}:\n  " + "\n  ".join(tail))
        if time.monotonic() > deadline:
            raise ConnectError(f"aegisd did not answer within {timeout:g} s; see {log_path}")
        time.sleep(delay)  # waiting on another process to come up: a bounded poll with backoff
        delay = min(delay * 2, 0.25)


def pid_alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def is_local(client: Client) -> bool:
    """Whether the daemon behind this client runs on this machine (its pid means something here)."""
    if client.url is None:
        return True
    from urllib.parse import urlsplit

    host = urlsplit(client.url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def wait_gone(client: Client, pid: int, timeout: float) -> bool:
    """Wait until the daemon has exited: its pid is gone (local), or it stops answering (remote). Another
    process's death gives no event, so this polls, bounded by the timeout. True when it is gone."""
    local = is_local(client)
    client.close()
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if local:
            if not pid_alive(pid):
                return True
        else:
            try:
                client.call("health")
            except ConnectError:
                return True
            except ClientError:
                pass
            client.close()
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
