"""GET /metrics: the daemon's metrics in the Prometheus text format (authenticated like any route), rendered by
prometheus-client from a registry of the daemon's own (never the process-wide default: tests run many daemons
in one process). Its one collector reads the counters where they are kept: the session manager's
(aegisd/core/metrics.py), the bus's and the alerts' (aegisd/notify/alerts.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from quart import Response
from quart_trio import QuartTrio

from aegisd.surfaces.http.auth import Gate

if TYPE_CHECKING:
    from aegisd.ops._services import Services


class DaemonCollector:
    """Collects the daemon's counters at scrape time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        d = self.services
        yield from d.manager.metrics.families(by_state=d.manager.counts(), created=d.manager.created_total,
                                              dropped=d.bus.dropped_subscribers, events=d.bus.published)
        yield from d.alerts.families()


def registry(services: Services) -> CollectorRegistry:
    """A registry of this daemon's metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DaemonCollector(services))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


def register(app: QuartTrio, gate: Gate) -> None:
    reg = registry(gate.services)

    @app.get("/metrics")
    async def prometheus() -> Response:
        gate.admit()
        gate.principal()
        return Response(exposition(reg), content_type=CONTENT_TYPE_PLAIN_0_0_4)
