"""The reads pollers repeat, answered without quart's request machinery.

For each request quart builds a werkzeug ``Headers`` of the request's (title-casing every name) and a
``Request``, pushes an app and a request context, binds the URL map, runs the before-request hooks, the view,
the after-request hooks and the teardowns, and sends the response as ASGI messages: about 165 µs of CPU per
request on this machine, where hypercorn and the ASGI call cost about 340 µs and our own work on a session list
(the browser guard, authentication, the limits, the operation, the ETag) about 110 µs. A dashboard or a script
polling ``GET /v1/sessions`` or ``GET /v1/sessions/<id>`` pays it on every poll.

:class:`LeanReads` answers those reads (the ``GET`` routes of ``routes.LEAN_OPS``: the session reads with an
ETag, and health) in the ASGI call itself, with the same parts in the same order: the route found by the app's
own URL map, :func:`app.guard_request`, :meth:`routes.OpView.answer`, :func:`app.answer_error` for whatever
they raise, and :func:`app.secure`. The view reads a :class:`LeanRequest`, which has what authentication and the
views read of quart's request (``auth.Conn``): the scope, the method, the path, the headers (read once into
``_headers.RequestHeaders``), the query's arguments and the cookies (parsed as werkzeug parses them, when asked).

Anything else goes to quart as before, decided before anything runs: another method (a ``HEAD`` too), a path no
lean route matches exactly (a redirect to the trailing slash, a 404, a 405), a request with a body (quart drains
it), an app with hooks other than the guard and the headers (:meth:`LeanReads.of` then makes none), or an ASGI
scope with a root path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response
from quart.utils import encode_headers
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException
from werkzeug.sansio.request import Request as SansioRequest

from aegisd.surfaces.http._headers import SCOPE_KEY, RequestHeaders, has_body


class LeanRequest:
    """A ``GET`` request without a body, as ``auth.Conn`` and the views read it; what quart's request would
    answer (see the module)."""

    __slots__ = ("scope", "method", "scheme", "path", "query_string", "remote_addr", "_parsed")

    def __init__(self, scope: Any, headers: RequestHeaders) -> None:
        self.scope = scope
        self.method = "GET"
        self.scheme = scope["scheme"]
        self.path = scope["path"]
        self.query_string: bytes = scope["query_string"]
        self.remote_addr = headers.get("Remote-Addr")
        self._parsed: SansioRequest | None = None
        scope[SCOPE_KEY] = headers  # what headers_of() answers

    @property
    def headers(self) -> RequestHeaders:
        return self.scope[SCOPE_KEY]  # type: ignore[no-any-return]

    def _werkzeug(self) -> SansioRequest:
        """The request as werkzeug parses it (its query arguments, its cookies), made when first asked."""
        if self._parsed is None:
            headers = Headers(_decoded(self.scope))
            self._parsed = SansioRequest(self.method, self.scheme, self.scope.get("server"), "", self.path,
                                         self.query_string, headers, self.remote_addr)
        return self._parsed

    @property
    def args(self) -> Any:
        return self._werkzeug().args

    @property
    def cookies(self) -> Any:
        return self._werkzeug().cookies


def _decoded(scope: Any) -> list[tuple[str, str]]:
    """The request's headers in the order received, decoded as quart decodes them."""
    return [(name.decode("latin1"), value.decode("latin1")) for name, value in scope["headers"]]


def request_headers(scope: Any, server_name: str | None) -> RequestHeaders:
    """The request's headers as quart reads them: ``Remote-Addr`` first (the client's address; a header of that
    name the client sends comes second), and a ``Host`` for an HTTP/1.0 request without one."""
    pairs = [("remote-addr", (scope.get("client") or ["<local>"])[0])]
    pairs += _decoded(scope)
    if scope["http_version"] < "1.1":
        pairs.append(("host", server_name or ""))  # quart's setdefault: a Host the client sent wins
    return RequestHeaders(pairs)


View = Callable[[Any, dict[str, str]], Awaitable[Response]]


class LeanReads:
    """The lean routes of one app: which requests they take (:meth:`serve` answers False to the rest, having done
    nothing) and how they are answered (see the module)."""

    def __init__(self, app: Any, views: dict[str, View], *, guard: Callable[[Any], Response | None],
                 secure: Callable[[Response, Any], Response],
                 answer_error: Callable[[Exception, Any], Response]) -> None:
        self.views = views
        self.adapter = app.url_map.bind("localhost")  # the app's own routes: the same match as quart's
        self.server_name = app.config["SERVER_NAME"]
        self.guard = guard
        self.secure = secure
        self.answer_error = answer_error

    @classmethod
    def of(cls, app: Any, views: dict[str, View], *, expected_hooks: int, **parts: Any) -> LeanReads | None:
        """The lean routes of ``app``, or None when the app has request hooks other than the ``expected_hooks``
        (before and after) this path does itself: it would skip them."""
        hooks = sum(len(funcs) for table in (app.before_request_funcs, app.after_request_funcs,
                                             app.teardown_request_funcs, app.url_value_preprocessors)
                    for funcs in table.values())
        return cls(app, views, **parts) if hooks == expected_hooks else None

    async def serve(self, scope: Any, send: Any) -> bool:
        """Answer the request of ``scope`` on ``send`` when it is a lean read; False (nothing done) otherwise."""
        if scope["method"] != "GET" or scope.get("root_path", "") or not scope["path"].startswith("/"):
            return False
        try:
            endpoint, values = self.adapter.match(scope["path"], method="GET")
        except HTTPException:  # not found, another method, a redirect: quart answers
            return False
        view = self.views.get(endpoint)  # type: ignore[arg-type]
        if view is None:
            return False
        headers = request_headers(scope, self.server_name)
        if has_body(headers):
            return False  # quart drains it before answering
        req = LeanRequest(scope, headers)
        try:
            resp = self.guard(req) or await view(req, values)
        except Exception as exc:  # what quart's error handlers answer (the envelope; a fault logged)
            resp = self.answer_error(exc, req)
        resp = self.secure(resp, req)
        body = await resp.get_data()
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": encode_headers(resp.headers)})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return True
