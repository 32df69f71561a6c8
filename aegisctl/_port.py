"""The daemon on a named HTTP port (--port / AEGIS_PORT): is it aegisd (`GET /v1/health`), and can this user reach
it through its control socket."""

from __future__ import annotations

import json
from typing import Any

from aegisctl.client import Client, ClientError, ConnectError, default_socket_path


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


def connect_port(port: int, socket_path: str | None, token: str | None) -> Client:
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
