"""JSON-RPC 2.0 over newline-delimited JSON, on trio streams: the client side of ACP.

Pure of process handling: give it a send stream (the agent's stdin) and a receive stream (its stdout).
Protocol violations (a non-JSON line, an oversized line, a response to an id we never sent) raise
:class:`ProtocolError` out of :meth:`AcpConnection.run`; the session owning the connection crashes, nothing else.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Protocol

import msgspec
import structlog
import trio

from aegisd.core import wire as w
from aegisd.core.errors import AgentError, ProtocolError, RequestTimeout
from aegisd.core.framing import LineFramer, LineTooLong

log = structlog.get_logger("aegisd.acp")


class ClientHandler(Protocol):
    """What the connection calls for agent -> client traffic."""

    async def on_update(self, session_id: str, update: w.SessionUpdate | w.UnknownUpdate) -> None:
        """A `session/update` notification; awaited in order (the reader waits: natural back-pressure)."""

    async def on_request_permission(self, params: w.RequestPermissionParams) -> dict[str, Any]:
        """A `session/request_permission` request; returns the result (`{"outcome": {...}}`)."""

    def on_activity(self) -> None:
        """Any message arrived from the agent (for stall detection)."""


class RemoteError(AgentError):
    """The agent answered a request with a JSON-RPC error."""

    code = "AGENT_ERROR"

    def __init__(self, method: str, error: w.RpcError) -> None:
        detail = f" {error.data}" if error.data not in (None, {}, "") else ""
        super().__init__(f"agent answered {method} with error {error.code}: {error.message}{detail}")
        self.rpc_code = error.code
        self.rpc_message = error.message
        self.rpc_data = error.data


class _Pending:
    __slots__ = ("done", "error", "method", "result")

    def __init__(self, method: str) -> None:
        self.method = method
        self.done = trio.Event()
        self.result: msgspec.Raw | None = None
        self.error: BaseException | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(w.Message)


class AcpConnection:
    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, handler: ClientHandler,
                 *, max_line_bytes: int = 16 * 1024 * 1024, label: str = "") -> None:
        self._send = send
        self._receive = receive
        self._handler = handler
        self._max_line = max_line_bytes
        self._ids = itertools.count()
        self._pending: dict[int, _Pending] = {}
        self._write_lock = trio.Lock()
        self._closed: BaseException | None = None
        self._nursery: trio.Nursery | None = None
        self._label = label
        self.agent_requests_seen: dict[str, int] = {}

    # ---- outgoing ------------------------------------------------------------------------------
    async def _write(self, msg: dict[str, Any]) -> None:
        data = _encoder.encode(msg) + b"\n"
        async with self._write_lock:
            try:
                await self._send.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise AgentError(f"cannot write to the agent: it closed its stdin ({exc.__class__.__name__})") \
                    from exc

    async def request(self, method: str, params: Any, *, timeout: float | None = None) -> msgspec.Raw:
        """Send a request and wait for its result (raw JSON). Raises RemoteError, RequestTimeout, AgentError."""
        return await self.wait(await self.send_request(method, params), timeout=timeout)

    async def send_request(self, method: str, params: Any) -> int:
        """Write a request; returns its id for :meth:`wait` (so callers can act between the two)."""
        if self._closed is not None:
            raise AgentError(f"agent connection closed: {self._closed}")
        req_id = next(self._ids)
        self._pending[req_id] = _Pending(method)
        try:
            await self._write({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        except BaseException:
            self._pending.pop(req_id, None)
            raise
        return req_id

    async def wait(self, req_id: int, *, timeout: float | None = None) -> msgspec.Raw:
        pending = self._pending[req_id]
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await pending.done.wait()
            if scope.cancelled_caught:
                raise RequestTimeout(f"agent did not answer {pending.method} within {timeout:g} s")
        finally:
            self._pending.pop(req_id, None)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def decode_result(self, method: str, raw: msgspec.Raw, result_type: type) -> Any:
        try:
            return msgspec.json.decode(raw, type=result_type)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"agent sent an invalid {method} result: {exc}") from exc

    async def call(self, method: str, params: Any, result_type: type, *, timeout: float | None = None) -> Any:
        return self.decode_result(method, await self.request(method, params, timeout=timeout), result_type)

    async def notify(self, method: str, params: Any) -> None:
        await self._write({"jsonrpc": "2.0", "method": method, "params": params})

    # ---- typed ACP methods ----------------------------------------------------------------------
    async def initialize(self, *, client_name: str, client_version: str, timeout: float) -> w.InitializeResult:
        params = {
            "protocolVersion": w.PROTOCOL_VERSION,
            "clientCapabilities": {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False},
            "clientInfo": {"name": client_name, "title": "Aegis", "version": client_version},
        }
        result: w.InitializeResult = await self.call("initialize", params, w.InitializeResult, timeout=timeout)
        if result.protocolVersion != w.PROTOCOL_VERSION:
            raise ProtocolError(f"agent speaks ACP protocol version {result.protocolVersion}, we speak "
                                f"{w.PROTOCOL_VERSION}")
        return result

    async def new_session(self, cwd: str, *, timeout: float,
                          mcp_servers: list[dict[str, Any]] | None = None) -> w.NewSessionResult:
        return await self.call("session/new", {"cwd": cwd, "mcpServers": mcp_servers or []},  # type: ignore
                               w.NewSessionResult, timeout=timeout)

    async def fork_session(self, session_id: str, cwd: str, *, timeout: float,
                           mcp_servers: list[dict[str, Any]] | None = None) -> w.NewSessionResult:
        """ACP `session/fork` (unstable; gated by `sessionCapabilities.fork`): a new session that starts
        from a copy of ``session_id``'s conversation."""
        return await self.call("session/fork", {"sessionId": session_id, "cwd": cwd,  # type: ignore
                                                "mcpServers": mcp_servers or []}, w.NewSessionResult, timeout=timeout)

    async def load_session(self, session_id: str, cwd: str, *, timeout: float,
                           mcp_servers: list[dict[str, Any]] | None = None) -> w.LoadSessionResult:
        loaded = await self.call("session/load", {"sessionId": session_id, "cwd": cwd,
                                                  "mcpServers": mcp_servers or []},
                                 w.LoadSessionResult | None, timeout=timeout)  # type: ignore[arg-type]
        return w.LoadSessionResult() if loaded is None else loaded  # older agents answered null: a success

    async def set_mode(self, session_id: str, mode_id: str, *, timeout: float) -> None:
        await self.request("session/set_mode", {"sessionId": session_id, "modeId": mode_id}, timeout=timeout)

    async def prompt(self, session_id: str, blocks: list[dict[str, Any]], *,
                     timeout: float | None = None) -> w.PromptResult:
        return await self.call("session/prompt", {"sessionId": session_id, "prompt": blocks},  # type: ignore
                               w.PromptResult, timeout=timeout)

    async def cancel(self, session_id: str) -> None:
        await self.notify("session/cancel", {"sessionId": session_id})

    # ---- incoming --------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch until the agent closes stdout (returns) or breaks the protocol (raises).

        Either way every request still waiting is failed, so no caller hangs on a dead agent."""
        framer = LineFramer(self._max_line)
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await self._read_loop(framer)
                except AgentError as exc:  # raised after the nursery closes, not wrapped in a group
                    error = exc
                self._fail_all(error or AgentError("the agent closed its stdout"))
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self._fail_all(AgentError(f"connection failed: {exc!r}"))
            raise
        finally:
            self._nursery = None
        if error is not None:
            raise error

    async def _read_loop(self, framer: LineFramer) -> None:
        while True:
            try:
                chunk = await self._receive.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                return
            framer.feed(chunk)
            while True:
                try:
                    line = framer.next_line()
                except LineTooLong as exc:
                    raise ProtocolError(f"agent wrote {exc}") from None
                if line is None:
                    break
                if line.strip():
                    await self._dispatch(line)

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for pending in list(self._pending.values()):
            if not pending.done.is_set():
                pending.error = exc
                pending.done.set()

    async def _dispatch(self, line: bytes) -> None:
        try:
            msg = _decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            shown = line[:200].decode("utf-8", "replace")
            raise ProtocolError(f"agent wrote a line that is not a JSON-RPC message ({exc}): {shown!r}") from None
        self._handler.on_activity()
        if msg.method is not None:
            if msg.id is None:
                await self._on_notification(msg.method, msg.params)
            else:
                assert self._nursery is not None
                self._nursery.start_soon(self._on_request, msg.id, msg.method, msg.params)
            return
        if msg.id is None:
            raise ProtocolError(f"agent sent a message with neither method nor id: {line[:200]!r}")
        pending = self._pending.get(msg.id) if isinstance(msg.id, int) else None
        if pending is None:
            raise ProtocolError(f"agent sent a response to unknown request id {msg.id!r}")
        if msg.error is not None:
            pending.error = RemoteError(pending.method, msg.error)
        else:
            pending.result = msg.result if len(msg.result) else msgspec.Raw(b"null")
        pending.done.set()

    async def _on_notification(self, method: str, params: msgspec.Raw) -> None:
        if method == "session/update" and len(params):
            try:
                note = msgspec.json.decode(params, type=w.SessionNotification)
            except msgspec.ValidationError as exc:
                raise ProtocolError(f"invalid session/update: {exc}") from None
            await self._handler.on_update(note.sessionId, w.decode_update(note.update))
        else:
            log.debug("acp.notification_ignored", method=method, agent=self._label)

    async def _on_request(self, req_id: int | str, method: str, params: msgspec.Raw) -> None:
        self.agent_requests_seen[method] = self.agent_requests_seen.get(method, 0) + 1
        try:
            if method == "session/request_permission":
                try:
                    typed = msgspec.json.decode(params if len(params) else b"{}", type=w.RequestPermissionParams)
                except msgspec.ValidationError as exc:
                    await self._reply_error(req_id, w.INVALID_PARAMS, f"invalid params: {exc}")
                    return
                result = await self._handler.on_request_permission(typed)
                await self._write({"jsonrpc": "2.0", "id": req_id, "result": result})
            else:
                # fs/* and terminal/* are not advertised; anything else is unknown: answer, never hang.
                await self._reply_error(req_id, w.METHOD_NOT_FOUND, f"Method not found: {method}")
        except AgentError:
            pass  # the agent went away while we answered; run() reports it

    async def _reply_error(self, req_id: int | str, code: int, message: str) -> None:
        await self._write({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}})
