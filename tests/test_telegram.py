"""Telegram: a permission request becomes a message with buttons; pressing Approve in the configured chat
approves that very request; other chats and stale buttons decide nothing. Against a stand-in Bot API."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.config import load_config
from aegisd.core.errors import ValidationError

from .conftest import DaemonHandle
from .fake_telegram import FakeTelegram

TOKEN = "123456:test-token"
CHAT = "-1001"


def press(tg: FakeTelegram, message: dict[str, Any], data: str, chat: str = CHAT, user: str = "ada") -> str:
    cq_id = f"cq-{len(tg.updates)}"
    tg.push({"callback_query": {"id": cq_id, "from": {"id": 7, "username": user}, "data": data,
                                "message": {"message_id": message["message_id"], "chat": {"id": int(chat)},
                                            "text": message["text"]}}})
    return cq_id


def answered(tg: FakeTelegram, cq_id: str) -> dict[str, Any] | None:
    return next((p for m, p in tg.calls if m == "answerCallbackQuery" and p["callback_query_id"] == cq_id), None)


async def test_approve_from_the_chat(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    tg = FakeTelegram(TOKEN)
    url = await nursery.start(tg.serve)
    d: DaemonHandle = await daemon_factory(telegram={"botToken": TOKEN, "chatId": CHAT, "apiUrl": url})
    s = await d.create(workdir, name="deploy", prompt="tool:execute:Run:make deploy")
    await tg.wait_for(lambda: any("asks to run Run" in m["text"] for m in tg.sent()))
    ask = next(m for m in tg.sent() if "asks to run Run" in m["text"])
    assert ask["chat_id"] == CHAT and f"deploy ({s['id'][:8]})" in ask["text"] and "make deploy" in ask["text"]
    approve, reject = ask["reply_markup"]["inline_keyboard"][0]
    assert (approve["text"], reject["text"]) == ("Approve", "Reject")
    message = {"message_id": 101, "text": ask["text"]}

    # a press from another chat decides nothing
    stranger = press(tg, message, approve["callback_data"], chat="-999")
    await tg.wait_for(lambda: answered(tg, stranger) is not None)
    assert answered(tg, stranger)["text"] == "Not allowed from this chat"  # type: ignore[index]
    assert d.manager.records[s["id"]].pendingPermission is not None

    ok = press(tg, message, approve["callback_data"])
    await d.wait_event(s["id"], "turn")
    await tg.wait_for(lambda: answered(tg, ok) is not None)
    assert answered(tg, ok)["text"] == "✅ Approved"  # type: ignore[index]
    await tg.wait_for(lambda: any(m == "editMessageText" for m, _ in tg.calls))
    edit = next(p for m, p in tg.calls if m == "editMessageText")
    assert edit["text"].endswith("✅ Approved by @ada") and "reply_markup" not in edit
    texts = [m["text"] for m in (await d.http.get(f"/v1/sessions/{s['id']}/transcript?limit=50")).json()["messages"]]
    assert any(t.startswith("permission: allow") for t in texts)  # the agent heard the answer
    audit = (await d.http.get("/v1/audit?action=permission.approve")).json()["records"]
    assert [r["actor"] for r in audit] == ["telegram:ada"]

    # the same button again: the request is no longer pending
    again = press(tg, message, approve["callback_data"])
    await tg.wait_for(lambda: answered(tg, again) is not None)
    assert answered(tg, again)["text"] == "That request is no longer pending"  # type: ignore[index]

    # /pending lists what waits, with buttons; the end of a session is told too
    await d.http.post(f"/v1/sessions/{s['id']}/send", json={"text": "tool:execute:Run:rm -rf build"})
    await d.wait_status(s["id"], "permission_prompt")
    n = len(tg.sent())
    tg.push({"message": {"message_id": 5, "chat": {"id": int(CHAT)}, "text": "/pending"}})
    await tg.wait_for(lambda: len(tg.sent()) >= n + 1 and "asks to run Run" in tg.sent()[-1]["text"])
    listed = tg.sent()[-1]
    rej = press(tg, {"message_id": 200, "text": listed["text"]},
                listed["reply_markup"]["inline_keyboard"][0][1]["callback_data"], user="bob")
    await tg.wait_for(lambda: answered(tg, rej) is not None)
    assert answered(tg, rej)["text"] == "❌ Rejected"  # type: ignore[index]
    await d.http.delete(f"/v1/sessions/{s['id']}")
    await tg.wait_for(lambda: any("ended killed" in m["text"] for m in tg.sent()))
    health = (await d.http.get("/v1/channels/health")).json()
    assert [(h["channel"], h["healthy"]) for h in health] == [("telegram", True)]


async def test_the_bot_token_stays_out_of_the_logs(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    """The token is part of every Bot API URL, and httpx logs each request's URL at INFO."""
    from .conftest import start_daemon_process

    tg = FakeTelegram(TOKEN)
    url = await nursery.start(tg.serve)
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery, extra_env={
        "AEGIS_TELEGRAM_BOT_TOKEN": TOKEN, "AEGIS_TELEGRAM_CHAT_ID": CHAT, "AEGIS_TELEGRAM_API_URL": url})
    work = tmp_path / "w"
    work.mkdir()
    import httpx

    async with httpx.AsyncClient(base_url=dp.http_url, timeout=20) as h:
        r = await h.post("/v1/sessions", json={"workDir": str(work), "prompt": "tool:execute:Run:ls"})
        assert r.status_code == 201
        await tg.wait_for(lambda: any("asks to run" in m["text"] for m in tg.sent()))
        r = await h.get("/v1/channels/health")  # a request after the send: the log has caught up with it
        assert r.json()[0]["healthy"] is True
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
    log = dp.log_path.read_text()
    assert "telegram" in log.lower() or "session" in log  # the log is there
    assert TOKEN not in log and TOKEN.split(":")[1] not in log


def test_bad_telegram_config() -> None:
    with pytest.raises(ValidationError, match="both botToken and chatId"):
        load_config(env={"AEGIS_TELEGRAM_BOT_TOKEN": "x"})
    with pytest.raises(ValidationError, match="telegram.events"):
        load_config(env={}, overrides={"telegram": {"botToken": "x", "chatId": "1", "events": ["everything"]}})
