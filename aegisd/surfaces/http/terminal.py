"""The live-terminal WebSocket route, `/v1/sessions/{id}/terminal`: authenticated as an SSE stream (bearer
header or `?token=sse_…`), or by a first message `{type: "auth", token}` when neither is given; the protocol
itself is _terminal's."""

from __future__ import annotations

import secrets

from quart import websocket
from quart_trio import QuartTrio

from aegisd.auth.principal import Principal
from aegisd.core.errors import AegisError, Unauthorized
from aegisd.surfaces.http import _terminal
from aegisd.surfaces.http.auth import Gate


def register(app: QuartTrio, gate: Gate) -> None:
    services = gate.services

    @app.websocket("/v1/sessions/<sid>/terminal")
    async def terminal(sid: str) -> None:
        gate.admit()
        rid = secrets.token_hex(8)

        async def first_message_auth(token: str) -> Principal:
            return gate.auth.first_message(websocket, token)

        try:
            principal: Principal | None = gate.principal(sse=True)
        except Unauthorized as exc:
            if not services.access.auth_enabled or websocket.args.get("token") or websocket.headers.get(
                    "Authorization"):
                await websocket.accept()
                await _terminal.refuse(websocket, exc)
                return
            principal = None  # the first message may carry {type: "auth", token}
        except AegisError as exc:
            await websocket.accept()
            await _terminal.refuse(websocket, exc)
            return
        await _terminal.serve(services, websocket, sid, principal, first_message_auth=first_message_auth,
                              request_id=rid, ip=gate.ip())
