"""Alerting: failures of one kind within the window fire one alert per cooldown to real local webhook
receivers (signed), GET /v1/alerts/stats, POST /v1/alerts/test, the Prometheus counters, the config checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.config import AlertingConfig, load_config
from aegisd.core.errors import ValidationError
from aegisd.notify import webhooks
from aegisd.notify.alerts import Alerts

from .conftest import DaemonHandle
from .test_webhooks import Receiver, wait_until


async def wait_stats(d: DaemonHandle, pred: Any, timeout: float = 10) -> dict[str, Any]:
    alerts = d.daemon.alerts
    with trio.fail_after(timeout):
        while not pred(alerts.stats()):
            await alerts.changed.wait()
    return alerts.stats()  # type: ignore[no-any-return]


async def test_crashes_fire_one_signed_alert_per_cooldown(daemon_factory: Any, nursery: trio.Nursery,
                                                          workdir: Path) -> None:
    recv = Receiver([])
    url = await nursery.start(recv.serve)
    d: DaemonHandle = await daemon_factory(alerting={"webhooks": [{"url": url, "secret": "pager"}],
                                                     "failureThreshold": 2, "cooldownMs": 600_000})
    for i in range(3):
        s = await d.create(workdir, reuse=False, prompt="crash:7")
        await d.wait_status(s["id"], "crashed")
        stats = await wait_stats(d, lambda st, n=i + 1: st["trackers"]["session_failure"]["total"] == n)
        if i == 0:
            assert stats["trackers"]["session_failure"]["fired"] == 0  # one crash is not a pattern
    await wait_until(lambda: len(recv.requests) >= 1, recv)
    stats = await wait_stats(d, lambda st: st["delivered"] == 1)
    # the third crash fell within the cooldown: counted, not sent again
    assert stats["trackers"]["session_failure"]["fired"] == 1 and len(recv.requests) == 1
    headers, body = recv.requests[0]
    assert webhooks.verify("pager", body, headers["x-aegis-signature"])
    assert headers["x-aegis-alert-type"] == "session_failure"
    alert = json.loads(body)
    assert alert["event"] == "alert" and alert["type"] == "session_failure" and alert["source"] == "aegis"
    assert alert["failureCount"] == 2 and alert["threshold"] == 2 and "crashed" in alert["detail"]
    over_http = (await d.http.get("/v1/alerts/stats")).json()
    assert over_http["trackers"]["session_failure"]["count"] == 3 and over_http["webhookCount"] == 1
    assert over_http["trackers"]["session_failure"]["lastAlertAt"] > 0
    prom = (await d.http.get("/metrics")).text
    assert 'aegis_alerts_fired_total{type="session_failure"} 1' in prom
    assert 'aegis_alert_failures_total{type="session_failure"} 3' in prom
    assert 'aegis_alert_deliveries_total{result="delivered"} 1' in prom


async def test_dead_letters_alert(daemon_factory: Any, nursery: trio.Nursery, workdir: Path,
                                  monkeypatch: Any) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_S", (0.01, 0.01, 0.01))
    down, pager = Receiver([500] * 10), Receiver([])
    down_url, pager_url = await nursery.start(down.serve), await nursery.start(pager.serve)
    d = await daemon_factory(webhooks=[{"url": down_url, "events": ["session.created"]}],
                             alerting={"webhooks": [pager_url], "failureThreshold": 1})
    await d.create(workdir)
    await wait_until(lambda: len(pager.requests) == 1, pager)
    alert = pager.events()[0]
    assert alert["type"] == "webhook_dead_letter" and webhooks.log_url(down_url) in alert["detail"]
    assert "/hook" not in alert["detail"]  # by host only: a chat webhook's secret is in its path


async def test_alerts_test_endpoint(daemon_factory: Any, nursery: trio.Nursery) -> None:
    async def restart(d: DaemonHandle, **cfg: Any) -> DaemonHandle:
        d.shutdown.set()
        with trio.fail_after(15):
            await d.done.wait()  # type: ignore[attr-defined]
        return await daemon_factory(**cfg)  # type: ignore[no-any-return]

    d = await daemon_factory()
    r = await d.http.post("/v1/alerts/test")
    assert r.status_code == 200 and r.json()["sent"] is False and "AEGIS_ALERT_WEBHOOKS" in r.json()["message"]
    ok, broken = Receiver([]), Receiver([500])
    ok_url, broken_url = await nursery.start(ok.serve), await nursery.start(broken.serve)
    d2 = await restart(d, alerting={"webhooks": [ok_url]})
    r = await d2.http.post("/v1/alerts/test")
    assert r.json() == {"sent": True, "webhookCount": 1}
    assert ok.events()[0]["test"] is True and ok.events()[0]["event"] == "alert"
    d3 = await restart(d2, alerting={"webhooks": [ok_url, broken_url]})
    r = await d3.http.post("/v1/alerts/test")
    assert r.status_code == 502 and r.json()["code"] == "DELIVERY_FAILED"
    # no retry for a test; the URL's path (where chat services keep the secret) is not shown
    assert r.json()["details"]["errors"] == [f"{broken_url.rsplit('/', 1)[0]}/…: HTTP 500"]
    assert (await d3.http.post("/v1/alerts/test", json={"x": 1})).status_code == 400
    assert (await d3.http.get("/v1/alerts/stats")).json()["failed"] == 1


def test_window_and_cooldown() -> None:
    a = Alerts(AlertingConfig(failureThreshold=3, cooldownMs=10_000))
    # failures further apart than the window never add up
    assert [a.record("api_error", "x", now=t) for t in (0, 11, 22, 33)] == [False] * 4
    assert [a.record("api_error", "x", now=t) for t in (50, 51, 52)] == [False, False, True]
    assert a.record("api_error", "x", now=55) is False  # within the cooldown
    assert a.record("session_stall", "y", now=55) is False  # kinds are counted apart
    assert [a.record("api_error", "x", now=t) for t in (63, 64)] == [False, True]  # cooldown over, 3 in window
    assert a.stats()["trackers"]["api_error"]["fired"] == 2


@pytest.mark.parametrize("env, message", [
    ({"AEGIS_ALERT_FAILURE_THRESHOLD": "0"}, "failureThreshold"),
    ({"AEGIS_ALERT_COOLDOWN_MS": "10"}, "cooldownMs"),
    ({"AEGIS_ALERT_WEBHOOKS": "ftp://pager"}, "http"),
    ({"AEGIS_ALERT_FAILURE_THRESHOLD": "many"}, "AEGIS_ALERT_FAILURE_THRESHOLD"),
])
def test_bad_alerting_config(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(env=env)


def test_alerting_env_merges_with_the_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text("alerting:\n  failureThreshold: 3\n  webhooks: [http://127.0.0.1:1/a]\n")
    cfg = load_config(env={"AEGIS_ALERT_COOLDOWN_MS": "5000"}, config_path=cfg_file)
    assert cfg.alerting == AlertingConfig(webhooks=["http://127.0.0.1:1/a"], failureThreshold=3, cooldownMs=5000)
