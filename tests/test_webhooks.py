"""Webhooks to a real local HTTP receiver: signatures, retries, no retry on 4xx, dead letters across restarts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from aegisd.notify import webhooks


class Receiver:
    """A tiny HTTP server answering each POST with the next scripted status (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.got = trio.Event()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in head.decode().split("\r\n")[1:] if ":" in line)}
                n = int(headers.get("content-length", "0"))
                while len(buf) < n:
                    buf += await stream.receive_some(65536)
                body, buf = buf[:n], buf[n:]
                self.requests.append((headers, body))
                self.got.set()
                status = self.statuses.pop(0) if self.statuses else 200
                await stream.send_all(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.requests]


async def wait_until(pred: Any, recv: Receiver, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not pred():
            recv.got = trio.Event()
            await recv.got.wait()


async def test_signed_deliveries(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    recv = Receiver([])
    url = await nursery.start(recv.serve)
    d = await daemon_factory(webhooks=[{"url": url, "secret": "s3cret", "events": ["session.*"]}])
    s = await d.create(workdir)
    await d.http.delete(f"/v1/sessions/{s['id']}")
    await wait_until(lambda: {e["event"] for e in recv.events()} >= {"session.created", "session.ended"}, recv)
    headers, body = recv.requests[0]
    assert webhooks.verify("s3cret", body, headers["x-aegis-signature"])
    assert not webhooks.verify("wrong", body, headers["x-aegis-signature"])
    ev = json.loads(body)
    assert ev["session"]["id"] == s["id"] and ev["session"]["workDir"] == "[REDACTED]"
    assert {e["event"] for e in recv.events()} <= {"session.created", "session.ended"}  # the filter applies


async def test_retries_dead_letters_and_4xx(daemon_factory: Any, nursery: trio.Nursery, workdir: Path,
                                           monkeypatch: Any) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_S", (0.01, 0.01, 0.01))
    flaky, down, refusing = Receiver([503, 200]), Receiver([500] * 10), Receiver([400] * 10)
    urls = [await nursery.start(r.serve) for r in (flaky, down, refusing)]
    cfg = {"webhooks": [{"url": u, "events": ["session.created"]} for u in urls]}
    d = await daemon_factory(**cfg)
    s = await d.create(workdir)
    await wait_until(lambda: len(flaky.requests) == 2, flaky)  # retried once, then delivered
    await wait_until(lambda: len(down.requests) == 3, down)  # three attempts
    await wait_until(lambda: len(refusing.requests) >= 1, refusing)
    with trio.fail_after(10):
        while not d.daemon.webhooks.dlq:  # the DLQ write follows the last failed attempt
            await d.daemon.webhooks.dlq_changed.wait()
    dlq = (await d.http.get("/v1/webhooks/dead-letter")).json()
    assert [x["endpoint"] for x in dlq] == [urls[1]] and dlq[0]["attempts"] == 3 and "500" in dlq[0]["error"]
    assert len(refusing.requests) == 1  # a 4xx is final
    # each attempt says its number; a retry carries the same body (the same eventId)
    assert [h["x-aegis-attempt"] for h, _ in flaky.requests] == ["1", "2"]
    assert [h["x-aegis-attempt"] for h, _ in down.requests] == ["1", "2", "3"]
    assert flaky.requests[0][1] == flaky.requests[1][1]
    # the delivery log per endpoint (newest first) and channel health
    log0 = (await d.http.get("/v1/hooks/0/deliveries")).json()
    assert [(x["status"], x["responseCode"], x["attemptNumber"]) for x in log0] == [
        ("success", 200, 2), ("failed", 503, 1)]
    assert [x["status"] for x in (await d.http.get("/v1/hooks/1/deliveries")).json()] == ["failed"] * 3
    assert (await d.http.get("/v1/hooks/3/deliveries")).status_code == 404
    assert (await d.http.get("/v1/hooks/x/deliveries")).status_code == 400
    health = (await d.http.get("/v1/channels/health")).json()
    assert [(h["endpoint"], h["healthy"]) for h in health] == [(urls[0], True), (urls[1], False), (urls[2], False)]
    assert health[1]["lastError"] == "HTTP 500" and health[0]["pendingCount"] == 0
    d.shutdown.set()
    with trio.fail_after(15):
        await d.done.wait()  # type: ignore[attr-defined]
    d2 = await daemon_factory(**cfg)
    assert [x["endpoint"] for x in (await d2.http.get("/v1/webhooks/dead-letter")).json()] == [urls[1]]
    _ = s


def test_bad_webhook_config() -> None:
    import pytest

    from aegisd.core.config import load_config
    from aegisd.core.errors import ValidationError

    with pytest.raises(ValidationError, match="http"):
        load_config(env={}, overrides={"webhooks": ["ftp://x"]})


async def test_chat_formats(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    slack, discord = Receiver([]), Receiver([])
    slack_url, discord_url = await nursery.start(slack.serve), await nursery.start(discord.serve)
    d = await daemon_factory(webhooks=[
        {"url": slack_url, "format": "slack", "events": ["status.permission", "session.ended"]},
        {"url": discord_url, "format": "discord", "events": ["status.permission"]}])
    s = await d.create(workdir, name="deploy", prompt="tool:execute:Run:make deploy")
    await wait_until(lambda: len(slack.requests) >= 1, slack)
    await wait_until(lambda: len(discord.requests) >= 1, discord)
    short = s["id"][:8]
    assert slack.events()[0] == {"text": f"[aegis] deploy ({short}) needs approval: Run"}
    assert discord.events()[0] == {"content": f"[aegis] deploy ({short}) needs approval: Run"}
    await d.http.delete(f"/v1/sessions/{s['id']}")
    await wait_until(lambda: len(slack.requests) >= 2, slack)
    assert slack.events()[1]["text"].startswith(f"[aegis] deploy ({short}) ended (killed")


def test_bad_webhook_format() -> None:
    import pytest

    from aegisd.core.config import load_config
    from aegisd.core.errors import ValidationError

    with pytest.raises(ValidationError, match="format must be one of json, slack, discord"):
        load_config(env={}, overrides={"webhooks": [{"url": "http://127.0.0.1:1/x", "format": "teams"}]})


async def test_channel_health_hides_webhook_paths_from_non_admins(daemon_factory: Any) -> None:
    secret = "http://127.0.0.1:1/services/T000/B000/XXXXsecret"
    d = await daemon_factory(strictRbac=True, webhooks=[{"url": secret, "format": "slack"}])  # local = viewer
    health = (await d.http.get("/v1/channels/health")).json()
    assert [h["endpoint"] for h in health] == ["http://127.0.0.1:1/…"]
