"""POST /v1/cluster/call: another node of the cluster passes on an operation on a session this node runs (or a
create placed here). Authenticated with the cluster secret (constant-time), never with a user's credential: the
calling node already authenticated and authorized its caller, whose principal comes with the call and is
checked again here. Answered with {ok, result} or {ok: false, error}, always 200 (the error is the operation's)."""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from aegisd import ops
from aegisd.cluster._pg import SECRET_HEADER, principal_from_wire
from aegisd.core.errors import AegisError, Unauthorized, ValidationError
from aegisd.ops import OpContext
from aegisd.surfaces.http.auth import Gate
from aegisd.surfaces.http.body import json_body
from aegisd.surfaces.http.errors import json_response


def register(app: QuartTrio, gate: Gate) -> None:
    @app.post("/v1/cluster/call")
    async def cluster_call() -> Response:
        svc = gate.services
        cluster = svc.cluster
        if cluster is None or not cluster.multi_node or not cluster.check_secret(
                request.headers.get(SECRET_HEADER)):
            gate.admit()  # a guess at the secret counts against the caller's IP like any request
            raise Unauthorized("node-to-node calls need the cluster secret (AEGIS_CLUSTER_SECRET)")
        frame = await json_body(request)
        name = frame.get("op")
        if not isinstance(name, str):
            raise ValidationError("cluster call needs an 'op' string")
        rid = str(frame.get("requestId") or gate.request_id())[:64]
        ctx = OpContext(services=svc, principal=principal_from_wire(frame.get("principal")), request_id=rid,
                        surface="cluster", ip=f"node:{str(frame.get('from'))[:63]}", forwarded=True)
        try:
            result: Any = await ops.call(ctx, name, frame.get("params"))
        except AegisError as exc:
            return json_response({"ok": False, "error": {"code": exc.code, "message": exc.message,
                                                         "status": exc.status, "details": exc.details}}, 200, rid)
        return json_response({"ok": True, "result": result}, 200, rid)
