"""The control plane: the control protocol (docs/control-protocol.md) on a Unix socket.

The socket file is created 0600 inside a 0700 directory, and every peer's uid is checked with SO_PEERCRED
(same uid as the services, or root). Peers act as admin, except those that belong to a session's process tree
(the agent, its tools, `ag mcp` started by it): they get that session's agent principal (aegisd/auth/callers.py).
A live daemon's socket is never taken over: a second services finds it answering and refuses to start."""

from __future__ import annotations

import errno
import math
import os
import socket as _socket
import stat
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

from aegisd import ops
from aegisd.auth.callers import unix_peer
from aegisd.auth.principal import agent_principal
from aegisd.core.errors import (
    AegisError,
    CapacityExceeded,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from aegisd.core.framing import LineFramer, LineTooLong
from aegisd.core.input import INT_MAX, INT_MIN, check, decode_json

if TYPE_CHECKING:
    from aegisd.ops._services import Services

log = structlog.get_logger("aegisd.control")

MAX_FRAME = 16 * 1024 * 1024
FRAME_TIMEOUT_S = 60.0  # a frame begun must end (with its newline) within this
MAX_IN_FLIGHT = 256  # requests running at once on one connection (streams included)
OUT_HIGH_WATER = 64 * 1024  # bytes queued for a connection before its senders wait
RUN_NOW_SLICE = 64  # requests the reader runs at once (no task of their own) between two checkpoints


class Request(msgspec.Struct):
    op: str
    id: int | str | None = None
    params: dict[str, Any] | None = None


_encoder = msgspec.json.Encoder()


def error_frame(req_id: Any, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AegisError):
        err: dict[str, Any] = {"code": exc.code, "message": exc.message, "status": exc.status}
        if exc.details is not None:
            err["details"] = exc.details
    else:
        err = {"code": "INTERNAL_ERROR", "message": "internal error", "status": 500}
    return {"id": req_id, "ok": False, "error": err}


def prepare_socket_path(path: Path) -> None:
    """Make the parent dir 0700 (creating it), and clear a stale socket; refuse if a live services answers."""
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


async def serve_control(services: Services, path: Path, *,
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
            nursery.start_soon(trio.serve_listeners, lambda s: _connection(services, s), [listener])
            task_status.started(path)
    finally:
        try:
            if path.stat().st_ino == inode:
                path.unlink()
        except FileNotFoundError:
            pass


class _Conn:
    """One connection's output. Answers and stream events are queued in the order they are sent and one writer
    task sends everything queued in one write (pipelined answers coalesce); a sender waits only when more than
    OUT_HIGH_WATER bytes are queued (a client that stops reading slows its own requests, nobody else's), or when
    it asks to wait until its frame is on the wire (a stream's next event is produced only then)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.closed = False
        self.in_flight = 0  # requests received on this connection and not yet answered
        self._out: list[bytes] = []
        self._queued = 0  # bytes in _out
        self._wake = trio.Event()
        self._room = trio.lowlevel.ParkingLot()  # senders waiting for the queue to drain
        self._finishing = False
        self._queued_frames = 0  # frames queued so far
        self._sent_frames = 0  # of those, how many were handed to the socket
        self._flushed = trio.lowlevel.ParkingLot()  # senders waiting for their frame to be sent
        self.ran_now = 0  # requests run at once by the reader (see _dispatch)

    async def send(self, frame: dict[str, Any], *, wait: bool = False) -> None:
        try:
            data = _encoder.encode(frame) + b"\n"
        except Exception as exc:  # noqa: BLE001 - a result that cannot be encoded is our fault: say so
            log.exception("control.encode_failed", error=repr(exc))
            data = _encoder.encode(error_frame(frame.get("id"), exc)) + b"\n"
        while self._queued >= OUT_HIGH_WATER and not self.closed:
            await self._room.park()
        if self.closed:
            return
        self._out.append(data)
        self._queued += len(data)
        self._queued_frames += 1
        self._wake.set()
        if wait:
            mine = self._queued_frames
            while self._sent_frames < mine and not self.closed:
                await self._flushed.park()

    def finish(self) -> None:
        """No more frames: the writer sends what is queued, then ends."""
        self._finishing = True
        self._wake.set()

    async def write_loop(self) -> None:
        while True:
            while not self._out:
                if self._finishing or self.closed:
                    return
                self._wake = trio.Event()
                await self._wake.wait()
                await trio.lowlevel.checkpoint()  # answers finished in this scheduling round join this write
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            frames = len(self._out)
            self._out.clear()
            self._queued = 0
            self._room.unpark_all()
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                self._out.clear()
                self._room.unpark_all()
                self._flushed.unpark_all()
                return
            self._sent_frames += frames
            self._flushed.unpark_all()


class _BadFrame(Exception):
    def __init__(self, req_id: int | str | None, error: AegisError) -> None:
        super().__init__(error.message)
        self.req_id = req_id
        self.error = error


def parse_frame(line: bytes) -> Request:
    """One request frame, or _BadFrame carrying its id when it had a usable one."""
    try:
        value = decode_json(line, what="request frame", checked=False)
    except ValidationError as exc:
        raise _BadFrame(None, exc) from None
    if not isinstance(value, dict):
        raise _BadFrame(None, ValidationError('a request frame is a JSON object: {"id", "op", "params"}'))
    req_id = value.get("id")
    if not (isinstance(req_id, str) and len(req_id) <= 200
            or isinstance(req_id, int) and not isinstance(req_id, bool) and INT_MIN <= req_id <= INT_MAX):
        req_id = None  # echoed only when it is one the client can match
    try:
        check(value, what="request frame")
        op, params, ident = value.get("op"), value.get("params"), value.get("id")
        if type(op) is str and (params is None or type(params) is dict) and (
                ident is None or type(ident) is int or type(ident) is str):
            return Request(op, ident, params)  # what msgspec.convert makes of it, without its cost
        return msgspec.convert(value, Request)
    except ValidationError as exc:
        raise _BadFrame(req_id, exc) from None
    except msgspec.ValidationError as exc:
        raise _BadFrame(req_id, ValidationError(f"malformed request frame: {exc}")) from None


async def _connection(services: Services, stream: trio.SocketStream) -> None:
    """One client. Whatever it sends fails that frame (an error frame) or, at worst, this connection (a frame
    too large or never finished); nothing it sends reaches the daemon's other connections."""
    conn = _Conn(stream)
    try:
        async with trio.open_nursery() as io:
            io.start_soon(conn.write_loop)
            try:
                await _serve(services, conn)
            finally:
                conn.finish()  # what was answered still goes out, then the writer ends
    except Exception as exc:  # noqa: BLE001 - a bug serving one connection must not take the services down
        log.exception("control.connection_failed", error=repr(exc))
    finally:
        conn.closed = True
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _serve(services: Services, conn: _Conn) -> None:
    pid, uid = unix_peer(conn.stream.socket)  # type: ignore[arg-type]
    if uid not in (os.getuid(), 0):
        await conn.send(error_frame(None, Unauthorized(f"uid {uid} may not use this daemon's socket")))
        return
    session_id = services.callers.session_of_pid(pid)
    principal = agent_principal(session_id) if session_id is not None else ops.Principal()
    if session_id is not None:
        log.info("control.agent_caller", session_id=session_id, pid=pid)
    async with trio.open_nursery() as requests:
        async with trio.open_nursery() as streams:
            await _read_frames(services, conn, principal, requests, streams)
            streams.cancel_scope.cancel()  # the client closed (or half-closed) its side: end its streams
        # requests already received still run and answer: a client that half-closes after writing
        # (`printf '...' | nc -U -N`) gets its answers


async def _read_frames(services: Services, conn: _Conn, principal: ops.Principal, requests: trio.Nursery,
                       streams: trio.Nursery) -> None:
    """Read newline-terminated frames (aegisd/core/framing.py) until the client closes its side, a frame exceeds
    MAX_FRAME, or one stays unfinished for FRAME_TIMEOUT_S."""
    framer = LineFramer(MAX_FRAME)
    deadline = math.inf  # set while a frame is partly received
    while True:
        chunk: bytes | None = None
        with trio.move_on_at(deadline):  # only the wait for bytes: answers being sent are never cut
            try:
                chunk = await conn.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
        if chunk is None:
            await conn.send(error_frame(None, ValidationError(
                f"a frame stayed unfinished for {FRAME_TIMEOUT_S:g} s (frames end with a newline)")))
            return
        if not chunk:
            return
        framer.feed(chunk)
        began = deadline == math.inf  # a new frame begins in this chunk
        while True:
            try:
                line = framer.next_line()
            except LineTooLong:
                await conn.send(error_frame(None, PayloadTooLarge(f"frame larger than {MAX_FRAME} bytes")))
                return
            if line is None:
                break
            began = True
            if line.strip():
                await _dispatch(services, conn, principal, line, requests, streams)
        if not framer.pending:
            deadline = math.inf
        elif began:
            deadline = trio.current_time() + FRAME_TIMEOUT_S


async def _dispatch(services: Services, conn: _Conn, principal: ops.Principal, line: bytes, requests: trio.Nursery,
                    streams: trio.Nursery) -> None:
    try:
        req = parse_frame(line)
    except _BadFrame as bad:  # answered here: a flood of bad frames is paced by the client's own reading
        await conn.send(error_frame(bad.req_id, bad.error))
        return
    if conn.in_flight >= MAX_IN_FLIGHT:
        await conn.send(error_frame(req.id, CapacityExceeded(
            f"{MAX_IN_FLIGHT} requests are already running on this connection; wait for answers, or open "
            "another connection")))
        return
    o = ops.REGISTRY.get(req.op)
    ctx = ops.OpContext(services=services, principal=principal, surface="socket")
    if o is not None and ops.runs_now(ctx, o):
        # an operation that never waits (session.get): run here, at once, without a task of its own; its
        # answer is queued in turn (or, while audit records wait to be stored, once they are)
        try:
            done = ops.run_now(ctx, o, req.params, checked=True)  # parse_frame checked the whole frame
        except Exception as exc:  # noqa: BLE001 - refused params or caller: answered like any error
            await _answer_error(conn, req, exc)
            return
        if not ops.settled(ctx):
            conn.in_flight += 1
            requests.start_soon(_handle, conn, req, ctx, done)
            return
        if done.error is not None:
            await _answer_error(conn, req, done.error)
        else:
            await conn.send({"id": req.id, "ok": True, "result": done.result})
        conn.ran_now += 1
        if conn.ran_now % RUN_NOW_SLICE == 0:  # a chunk of many such frames: let the daemon's other tasks run
            await trio.lowlevel.cancel_shielded_checkpoint()
        return
    conn.in_flight += 1
    (streams if o is not None and o.stream else requests).start_soon(_handle, conn, req, ctx, None)


async def _handle(conn: _Conn, req: Request, ctx: ops.OpContext, done: ops.Done | None) -> None:
    try:
        o = ops.get_op(req.op)
        if done is not None:  # run at once by _dispatch; answered once the audit records are stored
            result = await ops.finish(ctx, o, done)
            await conn.send({"id": req.id, "ok": True, "result": result})
        elif o.stream:
            async with aclosing(ops.stream(ctx, req.op, req.params, checked=True)) as events:
                async for event in events:
                    # on the wire before the stream goes on (daemon.stop's event must precede the shutdown)
                    await conn.send({"id": req.id, "event": event}, wait=True)
                    if conn.closed:
                        return
            await conn.send({"id": req.id, "ok": True, "result": {"end": "done"}})
        else:
            # the typed result, encoded as it is (what msgspec.to_builtins then encoding would give)
            result = await ops.call_typed(ctx, req.op, req.params, checked=True)
            await conn.send({"id": req.id, "ok": True, "result": result})
    except Exception as exc:  # noqa: BLE001 - a bug in one operation must not take the services down
        await _answer_error(conn, req, exc)
    finally:
        conn.in_flight -= 1


async def _answer_error(conn: _Conn, req: Request, exc: Exception) -> None:
    if not isinstance(exc, AegisError):
        log.error("control.op_failed", op=req.op, error=repr(exc), exc_info=exc)
    await conn.send(error_frame(req.id, exc))
