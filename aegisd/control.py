"""The control plane: the control protocol (docs/control-protocol.md) on a Unix socket.

The socket file is created 0600 inside a 0700 directory, and every peer's uid is checked with SO_PEERCRED
(same uid as the daemon, or root). Peers act as admin, except those that belong to a session's process tree
(the agent, its tools, `ag mcp` started by it): they get that session's agent principal (aegisd/callers.py).
A live daemon's socket is never taken over: a second daemon finds it answering and refuses to start."""

from __future__ import annotations

import errno
import os
import socket as _socket
import stat
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

from . import ops
from .callers import unix_peer
from .errors import AegisError, PayloadTooLarge, Unauthorized, Unavailable, ValidationError

if TYPE_CHECKING:
    from .daemon import Daemon

log = structlog.get_logger("aegisd.control")

MAX_FRAME = 16 * 1024 * 1024


class Request(msgspec.Struct):
    op: str
    id: int | str | None = None
    params: dict[str, Any] | None = None


_encoder = msgspec.json.Encoder()
_req_decoder = msgspec.json.Decoder(Request)


def error_frame(req_id: Any, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AegisError):
        err: dict[str, Any] = {"code": exc.code, "message": exc.message, "status": exc.status}
        if exc.details is not None:
            err["details"] = exc.details
    else:
        err = {"code": "INTERNAL_ERROR", "message": "internal error", "status": 500}
    return {"id": req_id, "ok": False, "error": err}


def prepare_socket_path(path: Path) -> None:
    """Make the parent dir 0700 (creating it), and clear a stale socket; refuse if a live daemon answers."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = parent.stat()
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(parent, 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise Unavailable(f"{path} exists and is not a socket; refusing to replace it")
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                path.unlink(missing_ok=True)  # stale: nobody listens
            else:
                raise Unavailable(f"cannot probe {path}: {exc}") from exc
        else:
            raise Unavailable(f"another aegisd is already listening on {path}")
        finally:
            probe.close()


async def serve_control(daemon: Daemon, path: Path, *,
                        task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    prepare_socket_path(path)
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600, never briefly wider
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(1024)  # bursts of clients (e.g. 200 parallel `ag create`) must not see EAGAIN
    inode = path.stat().st_ino
    listener = trio.SocketListener(sock)
    log.info("control.listening", socket=str(path))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, lambda s: _connection(daemon, s), [listener])
            task_status.started(path)
    finally:
        try:
            if path.stat().st_ino == inode:
                path.unlink()
        except FileNotFoundError:
            pass


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.closed = False

    async def send(self, frame: dict[str, Any]) -> None:
        data = _encoder.encode(frame) + b"\n"
        async with self.lock:
            if self.closed:
                return
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True


async def _connection(daemon: Daemon, stream: trio.SocketStream) -> None:
    conn = _Conn(stream)
    try:
        pid, uid = unix_peer(stream.socket)  # type: ignore[arg-type]
        if uid not in (os.getuid(), 0):
            await conn.send(error_frame(None, Unauthorized(f"uid {uid} may not use this daemon's socket")))
            return
        session_id = daemon.callers.session_of_pid(pid)
        principal = daemon.agent_principal(session_id) if session_id is not None else ops.Principal()
        if session_id is not None:
            log.info("control.agent_caller", session_id=session_id, pid=pid)
        async with trio.open_nursery() as nursery:
            buf = bytearray()
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    nursery.cancel_scope.cancel()  # client gone: end its streams
                    return
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    if line.strip():
                        nursery.start_soon(_handle, daemon, conn, line, principal)
                if len(buf) > MAX_FRAME:
                    await conn.send(error_frame(None, PayloadTooLarge(f"frame larger than {MAX_FRAME} bytes")))
                    nursery.cancel_scope.cancel()
                    return
    finally:
        conn.closed = True
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _handle(daemon: Daemon, conn: _Conn, line: bytes, principal: ops.Principal) -> None:
    try:
        req = _req_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        await conn.send(error_frame(None, ValidationError(f"malformed request frame: {exc}")))
        return
    ctx = ops.OpContext(daemon=daemon, principal=principal, surface="socket")
    try:
        o = ops.get_op(req.op)
        if o.stream:
            async with aclosing(ops.stream(ctx, req.op, req.params)) as events:
                async for event in events:
                    await conn.send({"id": req.id, "event": event})
                    if conn.closed:
                        return
            await conn.send({"id": req.id, "ok": True, "result": {"end": "done"}})
        else:
            result = await ops.call(ctx, req.op, req.params)
            await conn.send({"id": req.id, "ok": True, "result": result})
    except AegisError as exc:
        await conn.send(error_frame(req.id, exc))
    except Exception as exc:  # a bug in one operation must not take the daemon down
        log.exception("control.op_failed", op=req.op, error=repr(exc))
        await conn.send(error_frame(req.id, exc))
