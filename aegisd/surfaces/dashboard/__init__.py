"""The web dashboard: static files (no build step) at /dashboard/, talking to the /v1 API and its SSE stream.
Served with a strict Content-Security-Policy: scripts and styles only from this origin, no inline code."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from aegisd.ops._services import Services

STATIC = files(__package__) / "static"
TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def register(app: QuartTrio, services: Services) -> None:
    from quart import Response, redirect

    from aegisd.core.errors import NotFound

    assets = {name: (STATIC / name).read_bytes() for name in TYPES}

    async def page(name: str = "index.html") -> Response:
        if not services.config.dashboardEnabled:
            raise NotFound("the dashboard is disabled (dashboardEnabled: false)")
        body = assets.get(name)
        if body is None:
            raise NotFound(f"no dashboard file {name!r}")
        resp = Response(body, content_type=TYPES[name])
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def bare() -> Response:
        if not services.config.dashboardEnabled:
            raise NotFound("the dashboard is disabled (dashboardEnabled: false)")
        return redirect("/dashboard/")  # type: ignore[return-value]

    app.add_url_rule("/dashboard", endpoint="dashboard_bare", view_func=bare, methods=["GET"])
    app.add_url_rule("/dashboard/", endpoint="dashboard_index", view_func=page, methods=["GET"])
    app.add_url_rule("/dashboard/<name>", endpoint="dashboard_file", view_func=page, methods=["GET"])
