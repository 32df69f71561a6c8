"""Finding the daemon: the socket first, then HTTP on the port. (The daemon on a named port: `_port`; starting it
in the background and waiting for it to exit: `_background`. Apart, so that `ag list` compiles neither.)"""

from __future__ import annotations

import os

from aegisctl.client import Client, ClientError, ConnectError, default_socket_path


def requested_port(port: int | None = None) -> int | None:
    """The HTTP port the user named: --port, else AEGIS_PORT (0, "any free port", names no daemon)."""
    if port:
        return port
    try:
        return int(os.environ.get("AEGIS_PORT") or 0) or None
    except ValueError:
        return None


def port_of(port: int | None = None) -> int:
    return requested_port(port) or 9100


def connect(*, socket_path: str | None = None, url: str | None = None, port: int | None = None,
            probe: bool = True) -> Client:
    """A client for the daemon: --url / AEGIS_URL means HTTP; --port / AEGIS_PORT the daemon on that port
    (through its socket when possible); otherwise the socket, falling back to HTTP on 127.0.0.1:9100 when only
    TCP answers. Raises ConnectError when nothing answers."""
    token = os.environ.get("AEGIS_AUTH_TOKEN") or None
    url = url or os.environ.get("AEGIS_URL") or None
    if url:
        if token is None:
            from aegisctl._login import stored_token

            token = stored_token(url)  # from `ag login`
        return Client(url=url, token=token)
    wanted = requested_port(port)
    if wanted is not None and probe:
        from aegisctl._port import connect_port

        return connect_port(wanted, socket_path, token)
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
