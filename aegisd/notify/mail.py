"""Email: a message when a session needs approval, stalls or ends, with a link to it in the dashboard.

`email: {smtpUrl, from, to, events}`: `smtp://[user:password@]host[:port]` (STARTTLS when the server offers it),
`smtps://…` (TLS from the start, port 465). Sent by the standard library's smtplib in a worker thread, one
message per event, the same subject at most once a minute (a flapping session does not flood an inbox)."""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
import trio

from aegisd.bus import EventBus
from aegisd.core import events
from aegisd.core.config import EmailConfig
from aegisd.core.models import Event, SessionRecord
from aegisd.core.states import State
from aegisd.notify.health import ChannelHealth

log = structlog.get_logger("aegisd.mail")

REPEAT_S = 60.0
TIMEOUT_S = 15.0


class Email:
    def __init__(self, *, bus: EventBus, records: Mapping[str, SessionRecord], http_url: Callable[[], str],
                 cfg: EmailConfig) -> None:
        self.bus = bus
        self.records = records
        self.http_url = http_url
        self.cfg = cfg
        self.state = ChannelHealth()
        self._recent: dict[str, float] = {}

    def health(self) -> dict[str, Any]:
        p = urlsplit(self.cfg.smtpUrl)
        return self.state.report("email", f"{p.scheme}://{p.hostname}:{p.port or ''} → {', '.join(self.cfg.to)}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sub = await self.bus.subscribe(maxsize=100_000, local=True)  # once per cluster: by its node
        task_status.started()
        async with sub:
            async for ev in sub:
                message = self._compose(ev)
                if message is None:
                    continue
                subject, body, session_id = message
                now = time.monotonic()
                if now - self._recent.get(subject, -REPEAT_S) < REPEAT_S:
                    continue
                self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT_S}
                self._recent[subject] = now
                try:
                    await trio.to_thread.run_sync(self._send, subject, body)
                    self.state.ok()
                except Exception as exc:  # noqa: BLE001 - a mail server's trouble is reported, not raised
                    self.state.error(f"{type(exc).__name__}: {exc}")
                    log.warning("email.failed", session_id=session_id, error=self.state.last_error)

    def _compose(self, ev: Event) -> tuple[str, str, str] | None:
        want = set(self.cfg.events)
        rec = self.records.get(ev.sessionId)
        who = f"{rec.name if rec else 'session'} ({ev.sessionId[:8]})"
        link = f"{self.http_url().rstrip('/')}/dashboard/#/sessions/{ev.sessionId}"
        match events.payload(ev):
            case events.PermissionRequested(request=req) if "permission" in want:
                subject = f"[aegis] {who} needs approval: {req.toolTitle}"
                cmd = f"{ev.sessionId[:8]} --request {req.requestId}"  # this very request, not whatever is pending
                body = (f"{who} asks to run {req.toolTitle}.\n\nInput: {req.rawInput}\n\n"
                        f"Approve or reject: {link}\n(or `ag approve {cmd}` / `ag reject {cmd}`)\n")
            case events.StatusChanged(status=State.STALLED) if "stall" in want:
                subject = f"[aegis] {who} stalled"
                body = f"{who} shows no agent activity.\n\n{link}\n"
            case events.Ended(status=status, reason=reason) if "ended" in want:
                subject = f"[aegis] {who} ended {status.value}"
                body = f"{who} ended {status.value}" + (f": {reason}" if reason else "") + f".\n\n{link}\n"
            case _:
                return None
        return subject, body, ev.sessionId

    def _send(self, subject: str, body: str) -> None:
        p = urlsplit(self.cfg.smtpUrl)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.cfg.from_, ", ".join(self.cfg.to), subject
        msg.set_content(body)
        context = ssl.create_default_context()
        if p.scheme == "smtps":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(p.hostname or "", p.port or 465, timeout=TIMEOUT_S,
                                                  context=context)
        else:
            smtp = smtplib.SMTP(p.hostname or "", p.port or 25, timeout=TIMEOUT_S)
        with smtp:
            smtp.ehlo()
            if p.scheme == "smtp" and smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
            if p.username:
                smtp.login(unquote(p.username), unquote(p.password or ""))
            smtp.send_message(msg)
