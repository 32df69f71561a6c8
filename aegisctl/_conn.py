"""Finding the daemon: the socket first, then HTTP on the port; starting it in the background for `ag run`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .client import Client, ClientError, ConnectError, default_socket_path


def state_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ if env is None else env)
    return Path(os.path.expanduser(env.get("AEGIS_STATE_DIR") or "~/.aegis"))


def port_of(port: int | None = None) -> int:
    if port:
        return port
    try:
        return int(os.environ.get("AEGIS_PORT") or 9100)
    except ValueError:
        return 9100


def connect(*, socket_path: str | None = None, url: str | None = None, port: int | None = None,
            probe: bool = True) -> Client:
    """A client for the daemon: --url / AEGIS_URL means HTTP; otherwise the socket, falling back to HTTP on
    127.0.0.1:<port> when only TCP answers. Raises ConnectError when nothing answers."""
    token = os.environ.get("AEGIS_AUTH_TOKEN") or None
    url = url or os.environ.get("AEGIS_URL") or None
    if url:
        if token is None:
            from ._login import stored_token

            token = stored_token(url)  # from `ag login`
        return Client(url=url, token=token)
    client = Client(socket_path=socket_path or default_socket_path())
    if not probe:
        return client
    try:
        client.call("hello")
        return client
    except ConnectError as sock_err:
        client.close()
        http = Client(url=f"http://127.0.0.1:{port_of(port)}", token=token, timeout=5)
        try:
            http.call("hello")
        except ConnectError:
            raise sock_err from None
        except ClientError as exc:
            if exc.status == 401:
                http.timeout = 60
                return http
            raise
        http.timeout = 60
        return http


def systemd_unit_installed() -> bool:
    unit = Path(os.path.expanduser("~/.config/systemd/user/aegisd.service"))
    return unit.exists() and shutil.which("systemctl") is not None


def start_background(*, port: int | None = None, quiet: bool = False, timeout: float = 30.0) -> dict[str, Any]:
    """Start aegisd detached (or through `systemctl --user` when the unit is installed) and wait until it
    answers. Returns the daemon's `hello`."""
    log_path = state_dir() / "aegisd.log"
    if systemd_unit_installed():
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
