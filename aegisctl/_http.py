"""The client's HTTP transport: one `POST /v1/rpc` per operation (http.client, ssl), for a `Client` given a URL.
Apart from `client`, so that a command talking to the socket does not load (nor compile) it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aegisctl._frames import ClientError, ConnectError, events

if TYPE_CHECKING:
    import http.client
    import ssl


class Target(Protocol):
    """What the transport reads of the `Client`: where, with which token, how long to wait."""

    url: str | None
    token: str | None
    timeout: float
    ssl_context: ssl.SSLContext | None


def _conn(c: Target, timeout: float | None) -> tuple[http.client.HTTPConnection, str]:
    import http.client  # here: ~20 ms of imports (email, ssl) the socket transport never needs
    import urllib.parse

    assert c.url is not None
    u = urllib.parse.urlsplit(c.url)
    path = u.path.rstrip("/") + "/v1/rpc"
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout,
                                           context=c.ssl_context), path
    return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout), path


def _untrusted(c: Target, exc: BaseException) -> None:
    """An https daemon whose certificate this machine does not trust: not "aegisd is not running"."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        raise ClientError("TLS_UNTRUSTED", f"aegisd at {c.url} presents a certificate this machine does not "
                          f"trust ({exc.verify_message}): set SSL_CERT_FILE to its certificate (or to the CA "
                          "bundle that signed it)", 503) from None


def _headers(c: Target) -> dict[str, str]:
    h = {"Content-Type": "application/json", "Accept": "application/json"}
    if c.token:
        h["Authorization"] = f"Bearer {c.token}"
    return h


def http_rpc(c: Target, op: str, params: dict[str, Any]) -> dict[str, Any]:
    conn, path = _conn(c, c.timeout)
    try:
        conn.request("POST", path, json.dumps({"id": 1, "op": op, "params": params}), _headers(c))
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        _untrusted(c, exc)
        raise ConnectError(f"cannot reach aegisd at {c.url}: {exc}") from None
    finally:
        conn.close()
    try:
        frame = json.loads(body)
    except ValueError:
        raise ClientError("BAD_RESPONSE", f"unexpected answer from {c.url} (HTTP {resp.status})",
                          resp.status) from None
    if "ok" not in frame:  # an HTTP-level error envelope (401, 404, ...)
        return {"ok": False, "error": {"code": frame.get("code", "HTTP_ERROR"),
                                       "message": frame.get("message", f"HTTP {resp.status}"),
                                       "status": resp.status}}
    return frame  # type: ignore[no-any-return]


def http_stream(c: Target, op: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import http.client

    conn, path = _conn(c, None)
    try:
        conn.request("POST", path, json.dumps({"id": 1, "op": op, "params": params}), _headers(c))
        resp = conn.getresponse()
        if resp.status != 200:
            frame = json.loads(resp.read() or b"{}")
            raise ClientError(frame.get("code", "HTTP_ERROR"), frame.get("message", f"HTTP {resp.status}"),
                              resp.status)
        yield from events(resp)
    except (OSError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: the daemon went away
        _untrusted(c, exc)
        raise ConnectError(f"lost the stream from {c.url}: {exc!r}") from None
    finally:
        conn.close()
