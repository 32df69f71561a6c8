"""Alerting: when failures of one kind pile up, tell a human (PagerDuty, Slack, Alertmanager...) by webhook.

Kinds: `session_failure` (a session crashed), `session_stall` (a session went quiet mid-turn),
`webhook_dead_letter` (an event webhook gave up on a delivery), `api_error` (the HTTP API answered 5xx),
`store_unavailable` (the store failed: its server is down, its directory gone), `resource_exhausted` (a
create was refused: out of open files, processes or memory).
An alert fires when `failureThreshold` failures of one kind fall within `cooldownMs`, and then at most once per
`cooldownMs` per kind; `store_unavailable` fires at once, once per outage (:meth:`Alerts.store_changed`).
Each configured URL gets
`{event: "alert", type, timestamp, detail, failureCount, threshold, source: "aegis"}` with
`X-Aegis-Alert-Type` and, with a secret, `X-Aegis-Signature` (as event webhooks; aegisd.webhooks.verify checks
it). Failed deliveries are retried twice (1 s, 5 s) on network errors, 429 and 5xx."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client.core import CounterMetricFamily, Metric

from aegisd.core import retry
from aegisd.core.config import AlertingConfig
from aegisd.core.events import StatusChanged, payload
from aegisd.core.sections import validate_alerting as validate
from aegisd.core.states import State
from aegisd.notify.webhooks import Endpoint, log_url, sign

if TYPE_CHECKING:
    from aegisd.bus import EventBus

log = structlog.get_logger("aegisd.alerts")

KINDS = ("session_failure", "session_stall", "webhook_dead_letter", "api_error", "store_unavailable",
         "resource_exhausted")
RETRY = retry.Backoff((1.0, 5.0), attempts=3)  # on network errors, 429 and 5xx
TIMEOUT_S = 10.0


RECENT = 50  # details kept per kind, so a non-admin's view can show the last one about its own sessions


class _Tracker:
    def __init__(self) -> None:
        self.times: collections.deque[float] = collections.deque()
        self.total = 0
        self.fired = 0
        self.last_alert_at = 0  # epoch ms, 0: never
        self.recent: collections.deque[tuple[str, str | None]] = collections.deque(maxlen=RECENT)  # (detail, sid)

    def last_detail(self, visible: Callable[[str | None], bool] | None) -> str | None:
        for detail, sid in reversed(self.recent):
            if visible is None or visible(sid):
                return detail
        return None


class Alerts:
    def __init__(self, cfg: AlertingConfig) -> None:
        self.cfg = cfg
        self.endpoints = validate(cfg)
        self.trackers = {k: _Tracker() for k in KINDS}
        self.delivered = 0
        self.failed = 0
        self._send: trio.MemorySendChannel[dict[str, Any]] | None = None
        self._last_fire_mono: dict[str, float] = {}
        self._store_down = False  # an outage of the store is going on (its alert has fired)
        self.changed = trio.Event()  # set (and replaced) whenever a failure is counted or a delivery ends

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # ---- recording ---------------------------------------------------------------------------------
    def record(self, kind: str, detail: str, *, session_id: str | None = None, now: float | None = None) -> bool:
        """Count one failure (of ``session_id``'s, if it concerns one session); returns True when it fires an
        alert. Never blocks, never raises."""
        t = self.trackers[kind]
        now = time.monotonic() if now is None else now
        window = self.cfg.cooldownMs / 1000
        t.times.append(now)
        while t.times and now - t.times[0] > window:
            t.times.popleft()
        t.total += 1
        t.recent.append((detail, session_id))
        self._changed()
        last = self._last_fire_mono.get(kind)
        if len(t.times) < self.cfg.failureThreshold or (last is not None and now - last < window):
            return False
        self._last_fire_mono[kind] = now
        self._fire(kind, detail, len(t.times))
        return True

    def _fire(self, kind: str, detail: str, count: int) -> None:
        t = self.trackers[kind]
        t.fired += 1
        t.last_alert_at = int(time.time() * 1000)
        event = self._event(kind, detail, count)
        log.warning("alert.fired", alert_type=kind, failures=count, detail=detail)
        if self._send is not None and self.endpoints:
            try:
                self._send.send_nowait(event)
            except trio.WouldBlock:  # a flood of alerts: the stats and the log still have them
                log.error("alert.queue_full", alert_type=kind)

    def store_changed(self, ok: bool, reason: str | None) -> None:
        """The store's health changed (aegisd/store/_health.py): an outage fires `store_unavailable` at once and
        only once, however long it lasts and however many writes fail meanwhile; its end is logged. Never
        raises."""
        if ok:
            if self._store_down:
                self._store_down = False
                log.warning("alert.store_recovered")
            return
        if self._store_down:
            return
        self._store_down = True
        t = self.trackers["store_unavailable"]
        detail = f"the store is unavailable: {reason or '?'}"
        t.total += 1
        t.times.append(time.monotonic())
        t.recent.append((detail, None))
        self._changed()
        self._fire("store_unavailable", detail, 1)

    def _event(self, kind: str, detail: str, count: int) -> dict[str, Any]:
        return {"event": "alert", "type": kind, "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "detail": detail[:2000], "failureCount": count, "threshold": self.cfg.failureThreshold,
                "source": "aegis"}

    def stats(self, visible: Callable[[str | None], bool] | None = None) -> dict[str, Any]:
        """The counters, and each kind's last detail; with ``visible``, the last detail about a session it
        accepts (a non-admin's own), never one about another's session or about none (an API error's path)."""
        return {"delivered": self.delivered, "failed": self.failed, "webhookCount": len(self.endpoints),
                "failureThreshold": self.cfg.failureThreshold, "cooldownMs": self.cfg.cooldownMs,
                "trackers": {k: {"count": len(t.times), "total": t.total, "fired": t.fired,
                                 "lastAlertAt": t.last_alert_at, "lastDetail": t.last_detail(visible)}
                             for k, t in self.trackers.items()}}

    def families(self) -> Iterator[Metric]:
        """The Prometheus metric families of the counters (aegisd/surfaces/http/prometheus.py collects them)."""
        failures = CounterMetricFamily("aegis_alert_failures_total", "Failures counted for alerting, by kind.",
                                       labels=["type"])
        fired = CounterMetricFamily("aegis_alerts_fired_total", "Alerts fired, by kind.", labels=["type"])
        for k, t in self.trackers.items():
            failures.add_metric([k], t.total)
            fired.add_metric([k], t.fired)
        deliveries = CounterMetricFamily("aegis_alert_deliveries_total", "Alert webhook deliveries, by result.",
                                         labels=["result"])
        deliveries.add_metric(["delivered"], self.delivered)
        deliveries.add_metric(["failed"], self.failed)
        yield from (failures, fired, deliveries)

    # ---- delivery ----------------------------------------------------------------------------------
    async def _post(self, client: Any, ep: Endpoint, event: dict[str, Any], *, retries: bool) -> str | None:
        """Deliver to one endpoint; None on success, else why not."""
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "aegisd-alerts",
                   "X-Aegis-Alert-Type": str(event["type"])}
        error = ""

        async def attempt(_: int) -> bool:
            nonlocal error
            if ep.secret:
                headers["X-Aegis-Signature"] = sign(ep.secret, body)
            try:
                resp = await client.post(ep.url, content=body, headers=headers)
            except Exception as exc:  # noqa: BLE001 - every network error is worth another try
                error = f"{type(exc).__name__}: {exc}"
                return False
            if resp.status_code < 300:
                error = ""
                return True
            error = f"HTTP {resp.status_code}"
            return resp.status_code < 500 and resp.status_code != 429  # a refusal: trying again will not help

        await retry.run(RETRY if retries else retry.NO_RETRY, attempt)
        if not error:
            self.delivered += 1
            self._changed()
            return None
        self.failed += 1
        self._changed()
        log.error("alert.delivery_failed", url=log_url(ep.url), alert_type=event["type"], error=error)
        return error

    async def deliver(self, event: dict[str, Any], *, retries: bool = True) -> list[str]:
        """Send to every endpoint at once; the errors, one per endpoint that failed."""
        import httpx

        errors: list[str] = []
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client, trio.open_nursery() as nursery:
            async def one(ep: Endpoint) -> None:
                err = await self._post(client, ep, event, retries=retries)
                if err is not None:
                    errors.append(f"{log_url(ep.url)}: {err}")
            for ep in self.endpoints:
                nursery.start_soon(one, ep)
        return errors

    async def test(self) -> dict[str, Any]:
        event = self._event("session_failure", "test alert from POST /v1/alerts/test", 1)
        event["test"] = True
        return {"errors": await self.deliver(event, retries=False)}

    async def run(self, bus: EventBus, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch sessions for crashes and stalls, and send the alerts that fire."""
        send, recv = trio.open_memory_channel[dict[str, Any]](100)
        self._send = send
        # once per cluster (by its node); woken by status changes only, not by every chunk of every turn
        sub = await bus.subscribe(maxsize=100_000, local=True, kinds=frozenset({StatusChanged.NAME}))
        async with trio.open_nursery() as nursery:
            async def sender() -> None:
                async for event in recv:
                    try:
                        await self.deliver(event)
                    except Exception:  # a bug in delivery must not take the daemon down
                        log.exception("alert.internal_error")
            nursery.start_soon(sender)
            task_status.started()
            async with sub:
                async for ev in sub:
                    sid = (ev.sessionId or "")[:8]
                    match payload(ev):
                        case StatusChanged(status=State.CRASHED, detail=detail):
                            self.record("session_failure", f"session {sid} crashed: {detail or '?'}",
                                        session_id=ev.sessionId)
                        case StatusChanged(status=State.STALLED, detail=detail):
                            self.record("session_stall", f"session {sid} stalled: {detail or '?'}",
                                        session_id=ev.sessionId)
