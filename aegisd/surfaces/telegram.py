"""Telegram: approve or reject permission requests from a phone, and hear about stalls, crashes and ends.

A bot (`telegram.botToken`) posts to one chat (`telegram.chatId`). A permission request becomes a message with
**Approve** / **Reject** buttons; pressing one decides that very request (a button of a request that was already
decided, or superseded, says so and decides nothing). Only callbacks from the configured chat are honoured;
they act as `telegram:<username>` and are audited like any approval. `/pending` in the chat lists what waits.
Updates come by long polling (`getUpdates`), so no inbound port is needed. `telegram.apiUrl` points elsewhere
than api.telegram.org (a proxy, or a test server)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from aegisd.core import events, retry
from aegisd.core.errors import AegisError, NoPendingPermission, PermissionRequestMismatch, SessionNotLive
from aegisd.core.models import Event
from aegisd.core.states import State
from aegisd.notify.health import ChannelHealth

if TYPE_CHECKING:
    from aegisd.core.config import TelegramConfig
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.telegram")

POLL_TIMEOUT_S = 25
POLL_BACKOFF = retry.Backoff((1.0,), factor=2.0, cap=60.0)  # after failed polls in a row: 1, 2, 4 … 60 s
APPROVE, REJECT = "a", "r"


class TelegramError(Exception):
    pass


class Telegram:
    def __init__(self, services: Services, cfg: TelegramConfig) -> None:
        self.services = services
        self.cfg = cfg
        self.base = f"{cfg.apiUrl.rstrip('/')}/bot{cfg.botToken}"
        self.client: Any = None
        self.state = ChannelHealth()

    # ---- the Bot API ---------------------------------------------------------------------------------
    async def api(self, method: str, *, http_timeout: float = 20, **params: Any) -> Any:
        try:
            r = await self.client.post(f"{self.base}/{method}", json=params, timeout=http_timeout)
            body = r.json()
        except Exception as exc:  # noqa: BLE001 - network or a broken answer: the channel reports it
            self._failed(f"{method}: {type(exc).__name__}: {exc}")
            raise TelegramError(str(exc)) from None
        if not body.get("ok"):
            self._failed(f"{method}: {body.get('description') or body}")
            raise TelegramError(str(body.get("description")))
        self.state.ok()
        return body.get("result")

    def _failed(self, error: str) -> None:
        error = error.replace(self.cfg.botToken, "***")
        self.state.error(error)
        log.warning("telegram.api_failed", error=error)

    def health(self) -> dict[str, Any]:
        return self.state.report("telegram", f"chat {self.cfg.chatId}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import httpx

        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            self.client = client
            sub = await self.services.bus.subscribe(maxsize=100_000, local=True)  # once per cluster: by its node
            nursery.start_soon(self._outbound, sub)
            nursery.start_soon(self._inbound)
            task_status.started()

    # ---- out: events to the chat -------------------------------------------------------------------
    def _who(self, sid: str) -> str:
        rec = self.services.manager.records.get(sid)
        return f"{rec.name if rec else 'session'} ({sid[:8]})"

    async def _outbound(self, sub: Any) -> None:
        async with sub:
            async for ev in sub:
                try:
                    await self._notify(ev)
                except TelegramError:
                    pass  # counted and logged; the next event tries again
                except Exception:  # a bug here must not take the daemon down
                    log.exception("telegram.internal_error")

    async def _notify(self, ev: Event) -> None:
        want = set(self.cfg.events)
        match events.payload(ev):
            case events.PermissionRequested(request=req) if "permission" in want:
                raw = req.rawInput
                detail = json.dumps(raw, ensure_ascii=False)[:500] if raw not in (None, {}) else ""
                text = f"🔐 {self._who(ev.sessionId)} asks to run {req.toolTitle}" + (f"\n{detail}" if detail else "")
                await self.send(text, keyboard=self._buttons(ev.sessionId, req.requestId))
            case events.StatusChanged(status=State.STALLED) if "stall" in want:
                await self.send(f"⏸ {self._who(ev.sessionId)} stalled: no agent activity")
            case events.Ended(status=status, reason=why) if "ended" in want:
                icon = "💥" if status == State.CRASHED else "■"
                reason = f": {why}" if why else ""
                await self.send(f"{icon} {self._who(ev.sessionId)} ended {status.value}{reason}")

    def _buttons(self, sid: str, request_id: str) -> list[list[dict[str, str]]]:
        return [[{"text": "Approve", "callback_data": f"{APPROVE}|{sid}|{request_id}"},
                 {"text": "Reject", "callback_data": f"{REJECT}|{sid}|{request_id}"}]]

    async def send(self, text: str, keyboard: list[list[dict[str, str]]] | None = None) -> Any:
        params: dict[str, Any] = {"chat_id": self.cfg.chatId, "text": text[:4000]}
        if keyboard:
            params["reply_markup"] = {"inline_keyboard": keyboard}
        return await self.api("sendMessage", **params)

    # ---- in: button presses and commands ------------------------------------------------------------
    async def _inbound(self) -> None:
        offset = 0
        retrier = retry.Retrier(POLL_BACKOFF)
        while True:
            try:
                updates = await self.api("getUpdates", http_timeout=POLL_TIMEOUT_S + 10, offset=offset,
                                         timeout=POLL_TIMEOUT_S, allowed_updates=["callback_query", "message"])
            except TelegramError:
                await retrier.failed()
                continue
            retrier.succeeded()
            for u in updates or []:
                offset = max(offset, int(u.get("update_id", 0)) + 1)
                try:
                    if "callback_query" in u:
                        await self._callback(u["callback_query"])
                    elif "message" in u:
                        await self._message(u["message"])
                except TelegramError:
                    pass
                except Exception:  # noqa: BLE001 - one bad update must not stop the others
                    log.exception("telegram.update_failed")

    def _ours(self, chat: Any) -> bool:
        return str((chat or {}).get("id")) == str(self.cfg.chatId)

    async def _callback(self, cq: dict[str, Any]) -> None:
        from aegisd.ops import OpContext, Principal, call

        msg = cq.get("message") or {}
        if not self._ours(msg.get("chat")):
            log.warning("telegram.foreign_callback", chat=(msg.get("chat") or {}).get("id"))
            await self.api("answerCallbackQuery", callback_query_id=cq["id"], text="Not allowed from this chat")
            return
        verb, _, rest = str(cq.get("data") or "").partition("|")
        sid, _, request_id = rest.partition("|")
        if verb not in (APPROVE, REJECT) or not request_id or sid not in self.services.manager.records:
            await self._stale(cq, msg)
            return
        user = cq.get("from") or {}
        name = user.get("username") or user.get("first_name") or str(user.get("id"))
        ctx = OpContext(services=self.services, principal=Principal(kind="telegram", role="admin",
                                                                name=f"telegram:{name}"), surface="telegram")
        op = "session.approve" if verb == APPROVE else "session.reject"
        try:  # the request the button was sent for, and no other: the session's runner checks it atomically
            await call(ctx, op, {"id": sid, "requestId": request_id})
        except PermissionRequestMismatch as exc:
            if (exc.details or {}).get("queued"):  # still pending, behind an earlier one: keep the buttons
                await self.api("answerCallbackQuery", callback_query_id=cq["id"],
                               text="An earlier request of this session waits: decide it first")
            else:
                await self._stale(cq, msg)
            return
        except (NoPendingPermission, SessionNotLive):
            await self._stale(cq, msg)
            return
        except AegisError as exc:
            await self.api("answerCallbackQuery", callback_query_id=cq["id"], text=exc.message[:190])
            return
        done = "✅ Approved" if verb == APPROVE else "❌ Rejected"
        await self.api("answerCallbackQuery", callback_query_id=cq["id"], text=done)
        await self._close_buttons(msg, f"{done} by @{name}")

    async def _stale(self, cq: dict[str, Any], msg: dict[str, Any]) -> None:
        await self.api("answerCallbackQuery", callback_query_id=cq["id"], text="That request is no longer pending")
        await self._close_buttons(msg, "(no longer pending)")

    async def _close_buttons(self, msg: dict[str, Any], note: str) -> None:
        if msg.get("message_id") is None:
            return
        try:
            await self.api("editMessageText", chat_id=self.cfg.chatId, message_id=msg["message_id"],
                           text=f"{msg.get('text') or ''}\n{note}"[:4000])
        except TelegramError:
            pass

    async def _message(self, msg: dict[str, Any]) -> None:
        if not self._ours(msg.get("chat")) or not str(msg.get("text") or "").startswith("/pending"):
            return
        waiting = [r for r in self.services.manager.records.values() if r.pendingPermission is not None]
        if not waiting:
            await self.send("Nothing waits for approval.")
            return
        for r in waiting[:20]:
            p = r.pendingPermission
            assert p is not None
            age = int(time.time() - p.since / 1000)
            await self.send(f"🔐 {self._who(r.id)} asks to run {p.toolTitle} ({age} s ago)",
                            keyboard=self._buttons(r.id, p.requestId))
