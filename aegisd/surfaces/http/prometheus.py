"""GET /metrics: the daemon's metrics in the Prometheus text format (authenticated like any route)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Response
from quart_trio import QuartTrio

from aegisd.surfaces.http.auth import Gate

if TYPE_CHECKING:
    from aegisd.ops._services import Services

CONTENT_TYPE = "text/plain; version=0.0.4"


def exposition(services: Services) -> str:
    d = services
    text = d.manager.metrics.prometheus(by_state=d.manager.counts(), created=d.manager.created_total,
                                        dropped=d.bus.dropped_subscribers, events=d.bus.published)
    return text + d.alerts.prometheus()


def register(app: QuartTrio, gate: Gate) -> None:
    @app.get("/metrics")
    async def prometheus() -> Response:
        gate.admit()
        gate.principal()
        return Response(exposition(gate.services), content_type=CONTENT_TYPE)
