"""One small client for the control protocol, over the Unix socket (default) or over HTTP `POST /v1/rpc`.

Stdlib only (json and the C `_socket`), so `ag list` starts fast; the HTTP transport (`_http`: http.client, ssl)
loads only for a client given a URL. The answer frames and the errors they raise: `_frames`."""

from __future__ import annotations

import _socket
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl._frames import ClientError, ConnectError, events, result

if TYPE_CHECKING:
    import ssl

__all__ = ["Client", "ClientError", "ConnectError", "default_socket_path", "state_dir"]


class _Lines:
    """The lines of a socket, each with its b"\\n" (the last one before EOF maybe without): what
    ``socket.makefile("rb")`` gives, without the `socket` module (its enums cost ~5 ms of every `ag list`)."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def readline(self) -> bytes:
        start = 0
        while (end := self._buf.find(b"\n", start)) < 0:
            start = len(self._buf)
            chunk = self._sock.recv(65536)
            if not chunk:  # EOF: what is left, b"" at the end
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += chunk
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        self._buf.clear()


def state_dir(env: dict[str, str] | None = None) -> Path:
    """The daemon's state directory as this client sees it: AEGIS_STATE_DIR, else ~/.aegis."""
    env = dict(os.environ if env is None else env)
    return Path(os.path.expanduser(env.get("AEGIS_STATE_DIR") or "~/.aegis"))


def default_socket_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ if env is None else env)
    if env.get("AEGIS_SOCKET"):
        return Path(os.path.expanduser(env["AEGIS_SOCKET"]))
    return state_dir(env) / "aegisd.sock"


class Client:
    """``Client(socket_path=...)`` or ``Client(url=..., token=...)``."""

    def __init__(self, *, socket_path: str | Path | None = None, url: str | None = None,
                 token: str | None = None, timeout: float = 60.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self.ssl_context = ssl_context  # https: None = the system's CAs (and SSL_CERT_FILE)
        self.socket_path = Path(socket_path) if socket_path else (None if url else default_socket_path())
        self.token = token
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock: _socket.socket | None = None
        self._rfile: _Lines | None = None

    @property
    def target(self) -> str:
        return self.url or f"unix:{self.socket_path}"

    # ---- socket transport ----------------------------------------------------------------------
    def _connect(self, timeout: float | None) -> tuple[_socket.socket, _Lines]:
        assert self.socket_path is not None
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            for delay in (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 0):
                try:
                    s.connect(str(self.socket_path))
                    break
                except BlockingIOError:  # EAGAIN: the listen backlog is full for a moment
                    if not delay:
                        raise
                    time.sleep(delay)
        except FileNotFoundError:
            s.close()
            raise ConnectError(f"aegisd is not running (no socket at {self.socket_path})") from None
        except ConnectionRefusedError:
            s.close()
            raise ConnectError(f"aegisd is not running (nobody listens on {self.socket_path})") from None
        except PermissionError:
            s.close()
            raise ConnectError(f"permission denied on {self.socket_path} (it belongs to another user)") from None
        except OSError as exc:
            s.close()
            raise ConnectError(f"cannot connect to {self.socket_path}: {exc}") from None
        return s, _Lines(s)

    def close(self) -> None:
        if self._rfile is not None:
            self._rfile.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._rfile = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        if self.url:
            from aegisctl._http import http_rpc

            return result(http_rpc(self, op, params))
        if self._sock is None or self._rfile is None:
            self._sock, self._rfile = self._connect(self.timeout)
        sock, rfile = self._sock, self._rfile
        req_id = next(self._ids)
        try:
            sock.settimeout(self.timeout)  # the caller may have changed it for this call
            sock.sendall(json.dumps({"id": req_id, "op": op, "params": params}).encode() + b"\n")
            while True:
                line = rfile.readline()
                if not line:
                    raise ConnectError("aegisd closed the connection")
                frame = json.loads(line)
                if frame.get("id") == req_id or frame.get("id") is None:
                    return result(frame)
        except TimeoutError:
            self.close()
            raise ConnectError(f"aegisd did not answer {op} within {self.timeout:g} s") from None
        except OSError as exc:
            self.close()
            raise ConnectError(f"lost the connection to aegisd: {exc}") from None

    def stream(self, op: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Yield the events of a streaming operation until it ends."""
        params = {k: v for k, v in params.items() if v is not None}
        if self.url:
            from aegisctl._http import http_stream

            yield from http_stream(self, op, params)
            return
        sock, rfile = self._connect(None)
        try:
            sock.sendall(json.dumps({"id": 1, "op": op, "params": params}).encode() + b"\n")
            yield from events(rfile)
        finally:
            rfile.close()
            sock.close()
