"""A stand-in for the Telegram Bot API (the methods aegisd uses), served by hypercorn in the test's nursery."""

from __future__ import annotations

from typing import Any

import trio
from quart import request
from quart_trio import QuartTrio


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.updates: list[dict[str, Any]] = []
        self.changed = trio.Event()  # set (and replaced) on every call and every queued update
        self._next_update = 1
        self._next_message = 100
        self.url = ""
        self.app = self._build()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def push(self, update: dict[str, Any]) -> None:
        self.updates.append({"update_id": self._next_update, **update})
        self._next_update += 1
        self._changed()

    def sent(self) -> list[dict[str, Any]]:
        return [p for m, p in self.calls if m == "sendMessage"]

    async def wait_for(self, pred: Any, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not pred():
                await self.changed.wait()

    def _build(self) -> QuartTrio:
        app = QuartTrio("fake-telegram")
        tg = self

        @app.post("/bot<token>/<method>")
        async def method(token: str, method: str) -> Any:
            if token != tg.token:
                return {"ok": False, "error_code": 401, "description": "Unauthorized"}, 401
            params = await request.get_json() or {}
            if method == "getUpdates":
                offset = int(params.get("offset") or 0)
                with trio.move_on_after(min(float(params.get("timeout") or 0), 5)):
                    while not [u for u in tg.updates if u["update_id"] >= offset]:
                        await tg.changed.wait()
                return {"ok": True, "result": [u for u in tg.updates if u["update_id"] >= offset]}
            tg.calls.append((method, params))
            tg._changed()
            if method == "sendMessage":
                tg._next_message += 1
                return {"ok": True, "result": {"message_id": tg._next_message, "chat": {"id": params["chat_id"]},
                                               "text": params["text"]}}
            return {"ok": True, "result": True}

        return app

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from ._asgi import serve_app

        async with trio.open_nursery() as nursery:
            self.url = await nursery.start(serve_app, self.app)
            task_status.started(self.url)
