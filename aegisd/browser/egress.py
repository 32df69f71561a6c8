"""A guarded HTTP proxy for the screenshot browser: every connection the page makes (the page itself,
redirects, images, scripts, websockets, https through CONNECT) goes through it, and it connects only to
addresses the caller may reach, resolving each name itself (so DNS rebinding cannot switch the address after the
check). What it refuses is answered 403 and remembered, so the screenshot's response can list it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import structlog
import trio

log = structlog.get_logger("aegisd.egress")

HEAD_MAX = 32 * 1024
CONNECT_TIMEOUT_S = 10.0

# (host, port) -> the addresses allowed for it; raises ValueError saying why not
Check = Callable[[str, int], Awaitable[list[str]]]


class GuardedProxy:
    def __init__(self, check: Check) -> None:
        self.check = check
        self.blocked: list[str] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _refuse(self, client: trio.SocketStream, what: str, why: str) -> None:
        self.blocked.append(f"{what}: {why}")
        log.info("egress.refused", target=what, reason=why)
        await _answer(client, 403, f"refused by aegisd: {what}: {why}")

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            async with client:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await client.receive_some(65536)
                    if not chunk or len(head) > HEAD_MAX:
                        return
                    head += chunk
                head, rest = head.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                method, target, version = parts
                if method == "CONNECT":
                    host, _, port_s = target.rpartition(":")
                    host, port = host.strip("[]"), int(port_s or 443)
                    forward = b""
                else:
                    url = urlsplit(target)
                    if url.scheme not in ("http", "ws") or not url.hostname:
                        return await self._refuse(client, target[:200], "only absolute http URLs are proxied")
                    host, port = url.hostname, url.port or 80
                    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                    # one request per upstream connection: the next may be for another host, and must be
                    # checked again (upgrades such as websockets keep their Connection header)
                    upgrade = any(ln.lower().startswith("upgrade:") for ln in lines[1:])
                    drop = ("proxy-connection:", "proxy-authorization:", "keep-alive:") + \
                        (() if upgrade else ("connection:",))
                    kept = [ln for ln in lines[1:] if not ln.lower().startswith(drop)]
                    if not upgrade:
                        kept.append("Connection: close")
                    forward = ("\r\n".join([f"{method} {path} {version}", *kept]) + "\r\n\r\n").encode("latin-1")
                what = f"{host}:{port}"
                try:
                    addrs = await self.check(host, port)
                except LookupError as exc:  # no such name: a network failure, not a refusal
                    return await _answer(client, 502, f"{what}: {exc}")
                except ValueError as exc:
                    return await self._refuse(client, what, str(exc))
                upstream: trio.SocketStream | None = None
                try:
                    with trio.move_on_after(CONNECT_TIMEOUT_S):
                        upstream = await trio.open_tcp_stream(addrs[0], port)
                except OSError as exc:
                    return await _answer(client, 502, f"{what}: {exc.strerror or exc}")
                if upstream is None:
                    return await _answer(client, 504, f"{what}: no answer in {CONNECT_TIMEOUT_S:.0f} s")
                async with upstream:
                    if method == "CONNECT":
                        await client.send_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    else:
                        await upstream.send_all(forward)
                    if rest:
                        await upstream.send_all(rest)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
            return


async def _answer(client: trio.SocketStream, status: int, text: str) -> None:
    body = (text + "\n").encode()
    reason = {403: "Forbidden", 502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
    try:
        await client.send_all(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    except trio.BrokenResourceError:
        pass


async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        async for chunk in src:
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
