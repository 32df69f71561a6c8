"""Webhooks: session events POSTed to configured endpoints, signed, retried, dead-lettered.

Config (`webhooks:`): a list of URLs, or of `{url, secret?, events?: [names or prefixes*]}`. Each delivery is
`{event, timestamp, session: {id, name, workDir: "[REDACTED]"}, detail}` (the workDir is masked in detail too)
with, when a secret is set, `X-Aegis-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. Up to 3
attempts with backoff (1 s, 5 s, 30 s); a 4xx answer is not retried; what still fails after a 5xx or a network
error goes to the dead-letter queue (the store's `webhooks-dlq` log, aegisd/store: the last 100, kept across
restarts; an earlier version's `<state>/webhooks-dlq.json` is moved into it at start)."""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from aegisd.bus import EventBus
from aegisd.core import retry
from aegisd.core.events import Created, Ended, Message, Stall, StatusChanged, payload
from aegisd.core.models import Event, SessionRecord, now_ms
from aegisd.core.sections import Endpoint
from aegisd.notify.health import ChannelHealth
from aegisd.store import RecordLog, migrate_legacy

log = structlog.get_logger("aegisd.webhooks")

Alert = Callable[..., object]  # Alerts.record(kind, detail, session_id=…)

BACKOFF_S = (1.0, 5.0, 30.0)
DLQ_MAX = 100
DELIVERY_LOG = 100  # attempts kept per endpoint for GET /v1/hooks/{index}/deliveries
TIMEOUT_S = 5.0


class DeadLetter(msgspec.Struct):
    timestamp: int
    endpoint: str
    event: str
    error: str
    attempts: int
    payload: dict[str, Any] = {}


def _read_legacy_dlq(path: Path) -> list[DeadLetter]:
    try:
        return msgspec.json.decode(path.read_bytes(), type=list[DeadLetter])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300) -> bool:
    """For receivers: check an X-Aegis-Signature header."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), header)





def log_url(url: str) -> str:
    """A webhook URL fit for the log: the host, not the path or query (Slack and Discord put the secret there)."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    host = p.hostname or "?"
    return f"{p.scheme}://{host}{':' + str(p.port) if p.port else ''}/…"


def chat_text(name: str, payload: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for a chat channel: what happened to which session."""
    s = payload["session"]
    who = f"{s['name'] or 'session'} ({str(s['id'])[:8]})"
    what = {"session.created": "started", "status.idle": "is idle (turn done)", "status.working": "is working",
            "status.stall": "stalled: no agent activity", "status.error": "crashed",
            "status.permission": f"needs approval: {data.get('detail') or 'a tool'}"}.get(name)
    if name == "session.ended":
        what = f"ended ({data.get('status')}{': ' + str(data['reason']) if data.get('reason') else ''})"
    elif name.startswith("message."):
        text = str(data.get("text") or "")
        what = f"says: {text[:300]}{'…' if len(text) > 300 else ''}" if name == "message.assistant" \
            else f"uses a tool: {text[:200]}"
    return f"[aegis] {who} {what or name}"


REDACTED = "[REDACTED]"
_DIR_KEYS = frozenset({"workDir", "cwd"})


def redact(value: Any, workdir: str | None) -> Any:
    """``value`` without the session's workDir: fields that hold a directory are masked, and the path is replaced
    wherever a string quotes it (the created event's record, tool titles in status details, messages, crash
    reasons)."""
    if isinstance(value, dict):
        return {k: REDACTED if k in _DIR_KEYS and v else redact(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, workdir) for v in value]
    if isinstance(value, str) and workdir and workdir != "/" and workdir in value:
        return value.replace(workdir, REDACTED)
    return value


_STATUS_HOOKS = {"permission_prompt": "status.permission", "idle": "status.idle", "running": "status.working",
                 "stalled": "status.stall", "crashed": "status.error"}


def event_name(ev: Event) -> str | None:
    """The webhook event an envelope is, if any (matched on its typed kind)."""
    match payload(ev):
        case Created():
            return "session.created"
        case Ended():
            return "session.ended"
        case StatusChanged(status=status):
            return _STATUS_HOOKS.get(status.value)
        case Stall():
            return "status.stall"
        case Message(entry=entry) if entry.role == "assistant" and entry.contentType == "text":
            return "message.assistant"
        case Message(entry=entry) if entry.contentType == "tool_use":
            return "message.tool_use"
    return None


class Webhooks:
    def __init__(self, *, bus: EventBus, records: Mapping[str, SessionRecord], alert: Alert,
                 endpoints: list[Endpoint], dlq: RecordLog, legacy_dlq: Path | None = None) -> None:
        self.bus = bus
        self.records = records
        self.alert = alert  # a dead letter counts toward alerting (aegisd/notify/alerts.py)
        self.endpoints = endpoints
        self.dlq_log = dlq
        self.legacy_dlq = legacy_dlq
        self.sent = 0
        self.failed = 0
        self.dlq_changed = trio.Event()
        # per endpoint (by index): the last DELIVERY_LOG attempts, and what channel health reports
        self.deliveries: list[collections.deque[dict[str, Any]]] = [
            collections.deque(maxlen=DELIVERY_LOG) for _ in endpoints]
        self.state = [ChannelHealth() for _ in endpoints]
        self._delivery_seq = 0
        self.dlq: list[DeadLetter] = []  # the last DLQ_MAX, oldest first (loaded by open())
        self._dlq_lock = trio.Lock()  # a dead letter stored and listed as one step (reload_dlq reads between none)

    async def open(self) -> None:
        """Load the dead letters (after moving an earlier version's webhooks-dlq.json into the store)."""
        if self.legacy_dlq is not None:
            await migrate_legacy(self.legacy_dlq, _read_legacy_dlq, self._append_all)
        self.dlq = []
        for _, doc in await self.dlq_log.read():
            try:
                self.dlq.append(msgspec.convert(doc, DeadLetter))
            except msgspec.ValidationError:
                continue
        self.dlq = self.dlq[-DLQ_MAX:]

    async def _append_all(self, letters: list[DeadLetter]) -> None:
        await self.dlq_log.append_missing([msgspec.to_builtins(x) for x in letters[-DLQ_MAX:]])

    async def reload_dlq(self) -> None:
        """Other nodes of a cluster added dead letters to the shared log: list the last DLQ_MAX of all of them.
        Raises the store's error (StoreUnavailable) for the caller to retry."""
        async with self._dlq_lock:
            letters = []
            for _, doc in await self.dlq_log.read():
                try:
                    letters.append(msgspec.convert(doc, DeadLetter))
                except msgspec.ValidationError:
                    continue
            letters = letters[-DLQ_MAX:]
            if letters != self.dlq:
                self.dlq = letters
                self.dlq_changed.set()
                self.dlq_changed = trio.Event()

    async def _save_dead_letter(self, letter: DeadLetter) -> None:
        async with self._dlq_lock:
            seq = await self.dlq_log.append(msgspec.to_builtins(letter))
            self.dlq = [*self.dlq, letter][-DLQ_MAX:]
        if seq > DLQ_MAX:
            await self.dlq_log.trim(seq - DLQ_MAX + 1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.endpoints:
            task_status.started()
            return
        import httpx

        sub = await self.bus.subscribe(maxsize=100_000, local=True)  # once per cluster: by its node
        limiter = trio.CapacityLimiter(8)
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client, trio.open_nursery() as nursery:
            task_status.started()
            async for ev in sub:
                name = event_name(ev)
                if name is None:
                    continue
                for ep in self.endpoints:
                    if ep.events and not any(fnmatch.fnmatchcase(name, pat) for pat in ep.events):
                        continue
                    nursery.start_soon(self._deliver, client, limiter, ep, name, ev)

    def _payload(self, name: str, ev: Event) -> tuple[dict[str, Any], dict[str, Any]]:
        """The delivery's payload, and the event's data it was made from, both without the workDir."""
        rec = self.records.get(ev.sessionId)
        workdir = rec.workDir.rstrip("/") if rec else None
        data: dict[str, Any] = redact(ev.data, workdir)
        detail = json.dumps(data, ensure_ascii=False)[:2000]
        return {"event": name, "timestamp": ev.timestamp, "eventId": ev.id,
                "session": {"id": ev.sessionId, "name": redact(rec.name, workdir) if rec else "",
                            "workDir": REDACTED}, "detail": detail}, data

    async def _deliver(self, client: Any, limiter: trio.CapacityLimiter, ep: Endpoint, name: str,
                       ev: Event) -> None:
        state = self.state[self.endpoints.index(ep)]
        state.pending += 1
        try:
            await self._deliver_once(client, limiter, ep, name, ev)
        except Exception:  # a bug in a delivery must not take the daemon down
            log.exception("webhook.internal_error", url=log_url(ep.url), hook_event=name)
        finally:
            state.pending -= 1

    def _log_attempt(self, ep: Endpoint, name: str, attempt: int, status: str, code: int | None,
                     error: str | None) -> None:
        i = self.endpoints.index(ep)
        self._delivery_seq += 1
        ts = now_ms()
        self.deliveries[i].append({"id": self._delivery_seq, "endpointUrl": ep.url, "event": name, "status": status,
                                   "responseCode": code, "error": error, "timestamp": ts, "attemptNumber": attempt})
        if status == "success":
            self.state[i].ok(ts)
        else:
            self.state[i].error(error or status, ts)

    def health(self) -> list[dict[str, Any]]:
        """One entry per endpoint."""
        return [st.report("webhook", ep.url) for ep, st in zip(self.endpoints, self.state, strict=True)]

    async def _deliver_once(self, client: Any, limiter: trio.CapacityLimiter, ep: Endpoint, name: str,
                            ev: Event) -> None:
        payload, data = self._payload(name, ev)
        if ep.format == "json":
            body = json.dumps(payload, separators=(",", ":")).encode()
        else:
            text = chat_text(name, payload, data)
            body = json.dumps({"text": text} if ep.format == "slack" else {"content": text}).encode()
        error = ""

        async def attempt(n: int) -> bool:
            """True when done: delivered, or refused (a 4xx: trying again will not help, no dead letter)."""
            nonlocal error
            # the attempt's number: a receiver that got an attempt whose answer never came back sees the next one
            # as a retry of the same event (the same eventId), not a second event
            headers = {"Content-Type": "application/json", "User-Agent": "aegisd-webhooks", "X-Aegis-Event": name,
                       "X-Aegis-Attempt": str(n)}
            if ep.secret:
                headers["X-Aegis-Signature"] = sign(ep.secret, body)
            try:
                resp = await client.post(ep.url, content=body, headers=headers)
            except Exception as exc:  # noqa: BLE001 - network errors of every kind are retried
                error = f"{type(exc).__name__}: {exc}"
                self._log_attempt(ep, name, n, "failed", None, error)
                return False
            if resp.status_code < 300:
                self.sent += 1
                self._log_attempt(ep, name, n, "success", resp.status_code, None)
                return True
            error = f"HTTP {resp.status_code}"
            self._log_attempt(ep, name, n, "failed", resp.status_code, error)
            if resp.status_code < 500:
                self.failed += 1
                log.warning("webhook.rejected", url=log_url(ep.url), hook_event=name, status=resp.status_code)
                return True
            return False

        async with limiter:
            done, attempts = await retry.run(retry.Backoff(BACKOFF_S[:-1], attempts=len(BACKOFF_S)), attempt)
        if done:
            return
        self.failed += 1
        log.warning("webhook.dead_letter", url=log_url(ep.url), hook_event=name, error=error)
        await self._save_dead_letter(DeadLetter(timestamp=now_ms(), endpoint=ep.url, event=name, error=error,
                                                attempts=attempts, payload=payload))
        self.dlq_changed.set()
        self.dlq_changed = trio.Event()
        # by host only: the alert goes to another service, and Slack or Discord keep the secret in the path
        self.alert("webhook_dead_letter",
                                  f"webhook {self.endpoints.index(ep)} ({log_url(ep.url)}) gave up on {name} after "
                                  f"{attempts} attempts: {error}", session_id=ev.sessionId)
