"""Finding the daemon: the socket first, then HTTP on the port. (Starting it in the background and waiting for it
to exit: `_background`.)"""

from __future__ import annotations

import json
import os
from typing import Any

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


def health_at(port: int, timeout: float = 3.0) -> dict[str, Any] | None:
    """`GET /v1/health` (public) of whatever listens on 127.0.0.1:port; None when nothing answers there. A daemon
    serving TLS is asked over https (its certificate unchecked: nothing is sent but this request, and what is
    learnt, the pid, is checked against the socket's `hello`). The answer's ``url`` is the daemon's on this
    port. Raises ConnectError when something answers that is not aegisd."""
    try:
        return _health("http", port, timeout)
    except ConnectError as exc:
        if not isinstance(exc.__cause__, ConnectionResetError):  # incl. RemoteDisconnected
            raise
        try:  # a TLS port closes a plain HTTP request unanswered
            return _health("https", port, timeout)
        except ConnectError:
            raise exc from None


def _health(scheme: str, port: int, timeout: float) -> dict[str, Any] | None:
    import http.client

    conn: http.client.HTTPConnection
    if scheme == "https":
        import ssl

        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                           context=ssl._create_unverified_context())  # noqa: S323 - see health_at
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/v1/health", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except ConnectionRefusedError:
        return None
    except OSError as exc:
        raise ConnectError(f"127.0.0.1:{port} does not answer as aegisd ({exc})") from exc
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if resp.status != 200 or not isinstance(data, dict) or "pid" not in data:
        raise ConnectError(f"127.0.0.1:{port} is not aegisd (HTTP {resp.status} to /v1/health)")
    data["url"] = f"{scheme}://127.0.0.1:{port}"
    return data


def _connect_port(port: int, socket_path: str | None, token: str | None) -> Client:
    """The daemon on this HTTP port: through its control socket when this user can reach it (learnt from its
    `hello`, or the configured socket when that is the same daemon), else over HTTP."""
    health = health_at(port)
    if health is None:
        raise ConnectError(f"aegisd is not running on port {port} (nothing answers on 127.0.0.1:{port})")
    http_client = Client(url=health["url"], token=token, timeout=60)  # https: the certificate is checked
    sockets: list[str] = []
    try:
        sockets.append(http_client.call("hello")["socket"])
    except ClientError:
        pass  # it wants a token we do not have: maybe the socket needs none
    sockets.append(str(socket_path or default_socket_path()))
    for path in dict.fromkeys(sockets):
        sock = Client(socket_path=path)
        try:
            if sock.call("hello").get("pid") == health["pid"]:
                return sock
        except ClientError:
            pass
        sock.close()
    return http_client


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
        return _connect_port(wanted, socket_path, token)
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
