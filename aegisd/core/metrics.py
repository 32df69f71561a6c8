"""Daemon-wide counters and latency histograms (JSON at /v1/metrics; at /metrics as the Prometheus families
that :meth:`Metrics.families` yields, which prometheus-client renders)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    total: float = 0.0
    n: int = 0
    lo: float | None = None
    hi: float | None = None

    def observe(self, value_ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, value_ms)] += 1
        self.total += value_ms
        self.n += 1
        self.lo = value_ms if self.lo is None else min(self.lo, value_ms)
        self.hi = value_ms if self.hi is None else max(self.hi, value_ms)

    def summary(self) -> dict[str, float | int | None]:
        return {"min": self.lo, "max": self.hi, "avg": self.total / self.n if self.n else None, "count": self.n}

    def family(self, name: str, help_: str) -> HistogramMetricFamily:
        """This histogram as a Prometheus family (cumulative buckets, `le` as the plain bucket bound)."""
        buckets: list[tuple[str, float]] = []
        acc = 0
        for le, c in zip(BUCKETS_MS, self.counts):
            acc += c
            buckets.append((str(le), acc))
        buckets.append(("+Inf", self.n))
        return HistogramMetricFamily(name, help_, buckets=buckets, sum_value=self.total)


@dataclass
class Metrics:
    turns: int = 0
    prompts: int = 0
    approvals: int = 0
    rejections: int = 0
    auto_approvals: int = 0
    auto_rejections: int = 0
    crashes: int = 0
    screenshots: int = 0
    permission_latency: Histogram = field(default_factory=Histogram)
    turn_duration: Histogram = field(default_factory=Histogram)

    def families(self, *, by_state: dict[str, int], created: int, dropped: int, events: int) -> Iterator[Metric]:
        """The Prometheus metric families of these counters (and of the session and bus counts given), for a
        collector of the daemon's registry (aegisd/surfaces/http/prometheus.py)."""
        sessions = GaugeMetricFamily("aegis_sessions", "Sessions by state.", labels=["state"])
        for state, n in sorted(by_state.items()):
            sessions.add_metric([state], n)
        yield sessions
        for name, value, help_ in (
            ("aegis_sessions_created_total", created, "Sessions created."),
            ("aegis_turns_total", self.turns, "Prompt turns finished."),
            ("aegis_prompts_total", self.prompts, "Prompts accepted."),
            ("aegis_approvals_total", self.approvals, "Permission requests approved by a client."),
            ("aegis_rejections_total", self.rejections, "Permission requests rejected by a client."),
            ("aegis_auto_approvals_total", self.auto_approvals, "Permission requests approved by the mode."),
            ("aegis_auto_rejections_total", self.auto_rejections, "Permission requests rejected by the mode."),
            ("aegis_agent_crashes_total", self.crashes, "Sessions that ended crashed."),
            ("aegis_screenshots_total", self.screenshots, "Screenshots taken."),
            ("aegis_event_subscribers_dropped_total", dropped, "Event subscribers that fell behind."),
            ("aegis_events_published_total", events, "Events published on the bus."),
        ):
            yield CounterMetricFamily(name, help_, value=value)
        for name, h, help_ in (("aegis_permission_response_ms", self.permission_latency,
                                "Time from a permission request to its answer."),
                               ("aegis_turn_duration_ms", self.turn_duration, "Duration of prompt turns.")):
            yield h.family(name, help_)
