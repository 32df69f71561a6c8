"""The HTTP facade: the original Aegis `/v1` routes as thin adapters over the operations registry, plus
`POST /v1/rpc` carrying control-protocol frames. Errors use the envelope {error, code, message, requestId}.

One module per concern: app.py wires the app; routes.py holds the route table and binds each route to its
operation; auth.py finds the caller (credentials, the agents of sessions) and ratelimits.py counts its
requests; errors.py maps exceptions to the envelope; body.py reads request bodies; rpc.py, sse.py (over _sse),
terminal.py (over _terminal), sso.py and prometheus.py serve their routes; _browser.py holds the browser
defences and _openapi.py the OpenAPI document."""

from __future__ import annotations

from aegisd.surfaces.http.app import create_app
from aegisd.surfaces.http.errors import error_response
from aegisd.surfaces.http.routes import ROUTES

__all__ = ["ROUTES", "create_app", "error_response"]
