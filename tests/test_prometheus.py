"""/metrics alone (aegisd/surfaces/http/prometheus.py): prometheus-client renders the daemon's counters from a
registry of its own; the metric names and labels are those the original exposition had."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from aegisd.core.config import AlertingConfig
from aegisd.core.metrics import Metrics
from aegisd.notify.alerts import Alerts
from aegisd.surfaces.http.prometheus import exposition, registry

NAMES = ["aegis_sessions", "aegis_sessions_created", "aegis_turns", "aegis_prompts", "aegis_approvals",
         "aegis_rejections", "aegis_auto_approvals", "aegis_auto_rejections", "aegis_agent_crashes",
         "aegis_screenshots", "aegis_event_subscribers_dropped", "aegis_events_published",
         "aegis_permission_response_ms", "aegis_turn_duration_ms", "aegis_alert_failures", "aegis_alerts_fired",
         "aegis_alert_deliveries"]


def services(metrics: Metrics, alerts: Alerts) -> SimpleNamespace:
    manager = SimpleNamespace(metrics=metrics, counts=lambda: {"idle": 2, "running": 1}, created_total=5)
    return SimpleNamespace(manager=manager, bus=SimpleNamespace(dropped_subscribers=1, published=42), alerts=alerts)


def test_exposition() -> None:
    m = Metrics(turns=3, crashes=1)
    m.turn_duration.observe(40)
    m.turn_duration.observe(700)
    alerts = Alerts(AlertingConfig())
    alerts.record("session_failure", "boom", now=1.0)
    reg = registry(services(m, alerts))  # type: ignore[arg-type]
    text = exposition(reg).decode()
    assert [f.name for f in text_string_to_metric_families(text)] == NAMES
    for line in ('aegis_sessions{state="idle"} 2.0', "aegis_sessions_created_total 5.0", "aegis_turns_total 3.0",
                 "aegis_agent_crashes_total 1.0", "aegis_events_published_total 42.0",
                 "aegis_event_subscribers_dropped_total 1.0", 'aegis_turn_duration_ms_bucket{le="10"} 0.0',
                 'aegis_turn_duration_ms_bucket{le="50"} 1.0', 'aegis_turn_duration_ms_bucket{le="1000"} 2.0',
                 'aegis_turn_duration_ms_bucket{le="+Inf"} 2.0', "aegis_turn_duration_ms_count 2.0",
                 "aegis_turn_duration_ms_sum 740.0", 'aegis_alert_failures_total{type="session_failure"} 1.0',
                 'aegis_alerts_fired_total{type="api_error"} 0.0',
                 'aegis_alert_deliveries_total{result="failed"} 0.0',
                 "# TYPE aegis_turns_total counter", "# TYPE aegis_turn_duration_ms histogram",
                 "# HELP aegis_sessions Sessions by state."):
        assert line in text.splitlines(), line
    m.turns += 1  # read at scrape time
    assert "aegis_turns_total 4.0" in exposition(reg).decode().splitlines()


def test_each_daemon_has_its_own_registry() -> None:
    a = registry(services(Metrics(turns=1), Alerts(AlertingConfig())))  # type: ignore[arg-type]
    b = registry(services(Metrics(turns=2), Alerts(AlertingConfig())))  # type: ignore[arg-type]
    assert "aegis_turns_total 1.0" in exposition(a).decode() and "aegis_turns_total 2.0" in exposition(b).decode()
