"""A request's headers, read once per request.

werkzeug's ``Headers.get`` walks every header, lowercasing each name, and for a header that is absent raises
and catches an exception (``BadRequestKeyError``); our hooks and views ask for about a dozen headers per
request (Host, Origin, Content-Length, Transfer-Encoding, X-Request-Id, Authorization, If-None-Match...), most
of them absent. :func:`headers_of` reads the request's headers in one pass into a dict of lowercased names and
keeps it in the request's ASGI scope (one per request or WebSocket handshake), answering exactly what
``Headers.get`` answers: the first value of a name, in any case."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, overload

SCOPE_KEY = "aegis.headers"


class RequestHeaders:
    """Read-only: the first value of each header, looked up by name in any case (werkzeug's ``get``)."""

    __slots__ = ("_first",)

    def __init__(self, headers: Any) -> None:
        first: dict[str, str] = {}
        # werkzeug's Headers and a list (aegisd/surfaces/http/_lean.py) iterate as (name, value) pairs in the
        # order received; a plain mapping (unit tests) by its items
        for name, value in headers.items() if isinstance(headers, Mapping) else headers:
            first.setdefault(name.lower(), value)
        self._first = first

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)


def headers_of(conn: Any) -> RequestHeaders:
    """The headers of the request (or WebSocket handshake) ``conn``, read once (kept in its scope)."""
    scope = conn.scope
    found: RequestHeaders | None = scope.get(SCOPE_KEY)
    if found is None:
        found = scope[SCOPE_KEY] = RequestHeaders(conn.headers)
    return found


def has_body(headers: RequestHeaders) -> bool:
    """Whether the request may have a body (HTTP/1.1 framing: none without a length or chunking)."""
    return headers.get("Transfer-Encoding") is not None or headers.get("Content-Length", "0") != "0"
