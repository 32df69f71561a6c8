"""A tiny SMTP server for tests (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT), on trio."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import trio


class FakeSmtp:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.auth: list[tuple[str, str]] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.changed = trio.Event()
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def wait_for(self, n: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(self.messages) < n:
                await self.changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""

        async def line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
            out, buf = buf.split(b"\r\n", 1)
            return out

        async def say(text: str) -> None:
            await stream.send_all(text.encode() + b"\r\n")

        sender, rcpts = "", []
        try:
            await say("220 fake ESMTP")
            while True:
                cmd = (await line()).decode()
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    await stream.send_all(b"250-fake\r\n250-AUTH PLAIN\r\n250 SIZE 1000000\r\n")
                elif verb == "AUTH":
                    _, _, user, password = (b"\0" + base64.b64decode(cmd.split()[2])).decode().split("\0")[:4]
                    self.auth.append((user, password))
                    await say("235 2.7.0 ok")
                elif verb == "MAIL":
                    sender, rcpts = cmd.split(":", 1)[1].strip(), []
                    await say("250 ok")
                elif verb == "RCPT":
                    rcpts.append(cmd.split(":", 1)[1].strip())
                    await say("250 ok")
                elif verb == "DATA":
                    await say("354 go on")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        data += (await line()) + b"\r\n"
                    msg: Any = email.message_from_bytes(data[:-5].replace(b"\r\n..", b"\r\n."),
                                                        policy=email.policy.default)
                    self.messages.append(msg)
                    self.envelopes.append((sender, rcpts))
                    self.changed.set()
                    self.changed = trio.Event()
                    await say("250 queued")
                elif verb == "QUIT":
                    await say("221 bye")
                    return
                else:
                    await say("250 ok")
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
