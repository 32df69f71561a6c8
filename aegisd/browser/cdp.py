"""Just enough of the Chrome DevTools Protocol, over `--remote-debugging-pipe` (fd 3: commands in, fd 4:
answers out, JSON messages ending in NUL), to load a page and take a screenshot of it, the whole page if asked.
No driver, no websocket port, nothing asyncio-bound: a child process and two pipes under trio."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import sys
from typing import Any

import trio

from aegisd.acp._groups import end_group


class CdpError(Exception):
    pass


class _Pipe:
    def __init__(self, send: trio.lowlevel.FdStream, recv: trio.lowlevel.FdStream) -> None:
        self.send_stream, self.recv_stream = send, recv
        self._ids = 0
        self._buf = b""
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._event_seen = trio.Event()
        self.closed = False

    async def reader(self) -> None:
        async for chunk in self.recv_stream:
            self._buf += chunk
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._pending:
                    self._pending.pop(msg["id"]).send_nowait(msg)
                elif "method" in msg:
                    self.events.append(msg)
                    self._event_seen.set()
                    self._event_seen = trio.Event()
        self.closed = True
        for ch in self._pending.values():  # the browser went away
            ch.send_nowait({"error": {"message": "the browser exited"}})
        self._pending.clear()
        self._event_seen.set()

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        if self.closed:
            raise CdpError(f"{method}: the browser exited")
        self._ids += 1
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[self._ids] = send
        msg: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            await self.send_stream.send_all(json.dumps(msg).encode() + b"\0")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise CdpError(f"{method}: the browser exited") from None
        reply = await recv.receive()
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def wait_event(self, method: str, session: str | None = None) -> dict[str, Any]:
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == method and (session is None or ev.get("sessionId") == session):
                    return ev
            if self.closed:
                raise CdpError(f"the browser exited before {method}")
            seen = len(self.events)
            await self._event_seen.wait()


_TRAMPOLINE = ("import os, sys\n"
               "a, b = int(sys.argv[1]), int(sys.argv[2])\n"
               "os.dup2(a, 3); os.dup2(b, 4); os.close(a); os.close(b)\n"
               "os.execv(sys.argv[3], sys.argv[3:])\n")


def _high(*fds: int) -> tuple[int, ...]:
    """The same pipe ends above fd 9, so that putting one on fd 3 or 4 cannot clobber the other."""
    out = []
    for fd in fds:
        if fd < 10:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            fd = new
        out.append(fd)
    return tuple(out)


async def screenshot(args: list[str], env: dict[str, str], *, url: str, width: int, height: int, full_page: bool,
                     timeout: float, lifeline: Any = None) -> tuple[bytes, str | None]:
    """Start the browser (args: the executable and its flags, without the pipe flag), load url, capture PNG.
    Returns (png, the navigation's error text or None). The browser's group is killed afterwards."""
    cmd_r, cmd_w = _high(*os.pipe())  # we write commands, the browser reads them on its fd 3
    res_r, res_w = _high(*os.pipe())  # the browser writes answers on its fd 4
    proc: trio.Process | None = None
    try:
        # a tiny trampoline puts the pipe ends on fds 3 and 4 and execs the browser (dash, Debian's sh, only
        # redirects single-digit fds, and Debian's chromium is itself a shell script)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(cmd_r), str(res_w), *args, "--remote-debugging-pipe",
             "about:blank"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(cmd_r, res_w), start_new_session=True)
    finally:
        os.close(cmd_r)
        os.close(res_w)
    pipe = _Pipe(trio.lowlevel.FdStream(cmd_w), trio.lowlevel.FdStream(res_r))
    try:
        if lifeline is not None:
            await lifeline.register(proc.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe.reader)
                with trio.fail_after(timeout):
                    result = await _capture(pipe, url, width, height, full_page)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the one failure inside, as itself
            leaves = [e for e in _leaves(group) if isinstance(e, (CdpError, trio.TooSlowError, ValueError))]
            if not leaves:
                raise
            raise leaves[0] from None
        return result
    except trio.TooSlowError:
        raise CdpError(f"the page did not load within {timeout:.0f} s") from None
    finally:
        with trio.CancelScope(shield=True):
            for s in (pipe.send_stream, pipe.recv_stream):
                await s.aclose()
            await end_group(proc, lifeline)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:  # type: ignore[type-arg]
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


async def _capture(pipe: _Pipe, url: str, width: int, height: int, full_page: bool) -> tuple[bytes, str | None]:
    target = (await pipe.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
    session = (await pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    await pipe.call("Page.enable", session=session)
    await pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                            "deviceScaleFactor": 1, "mobile": False}, session)
    nav = await pipe.call("Page.navigate", {"url": url}, session)
    error = nav.get("errorText") or None
    if not error:
        await pipe.wait_event("Page.loadEventFired", session)
    params: dict[str, Any] = {"format": "png"}
    if full_page:
        metrics = await pipe.call("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
        full_h = min(max(int(size.get("height") or height), height), 16_384)
        params.update(captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": width, "height": full_h, "scale": 1})
    shot = await pipe.call("Page.captureScreenshot", params, session)
    try:
        await pipe.call("Browser.close")
    except CdpError:
        pass
    return base64.b64decode(shot["data"]), error
