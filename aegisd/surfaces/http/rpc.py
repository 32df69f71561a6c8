"""POST /v1/rpc: one control-protocol request frame `{id, op, params}` over HTTP (with HTTP auth), answered
with the response frame, or, for a streaming operation, NDJSON event frames and a last response frame."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from aegisd import ops
from aegisd.core.errors import AegisError, ValidationError
from aegisd.surfaces.http.auth import Gate
from aegisd.surfaces.http.body import json_body
from aegisd.surfaces.http.errors import encoder, json_response


def error_frame(req_id: Any, exc: AegisError) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": {"code": exc.code, "message": exc.message, "status": exc.status}}


async def _frames(req_id: Any, events: AsyncGenerator[Any, None]) -> AsyncIterator[bytes]:
    try:
        async with aclosing(events):
            async for event in events:
                yield encoder.encode({"id": req_id, "event": event}) + b"\n"
        yield encoder.encode({"id": req_id, "ok": True, "result": {"end": "done"}}) + b"\n"
    except AegisError as exc:
        yield encoder.encode(error_frame(req_id, exc)) + b"\n"


def register(app: QuartTrio, gate: Gate) -> None:
    @app.post("/v1/rpc")
    async def rpc() -> Response:
        gate.admit()
        rid = gate.request_id()
        ctx = gate.context(gate.principal(), rid, surface="rpc")
        frame = await json_body(request)
        req_id = frame.get("id")
        name = frame.get("op")
        if not isinstance(name, str):
            raise ValidationError("rpc frame needs an 'op' string")
        if not ops.get_op(name).stream:
            try:
                result = await ops.call(ctx, name, frame.get("params"))
            except AegisError as exc:
                return json_response(error_frame(req_id, exc), exc.status, rid)
            return json_response({"id": req_id, "ok": True, "result": result}, 200, rid)
        resp = Response(_frames(req_id, ops.stream(ctx, name, frame.get("params"))),
                        content_type="application/x-ndjson")
        resp.timeout = None
        return resp
