"""Streamed bodies (the SSE streams) written with the least machinery the stack allows.

Quart sends each chunk of a streamed body as one ASGI ``http.response.body`` message, and hypercorn's trio
worker passes each through its HTTP stream, h11's state machine and chunk framing, a ``trio.Lock``, a shielded
cancel scope and ``SocketStream.send_all``: two reschedules and tens of µs of CPU per chunk, whatever its size,
where the ``send`` system call itself is a fraction of it. A hundred subscribers at 200 events/s is 20,000 such
chunks a second.

A :class:`StreamResponse` is a quart Response whose body a coroutine writes to an :class:`Out` instead. The
request has been through every before-request hook, the view (authentication, limits) and every after-request
hook, and the status line and headers go out through ASGI as for any response. Then, when hypercorn serves the
connection over plain HTTP/1 (h11 in its body state, framing it chunked or close-delimited, a trio
``SocketStream``: no TLS, no HTTP/2), each chunk is framed the way h11 would frame it and written to the socket
at once, with no lock and no reschedule, when the kernel takes it all (the usual case: :class:`DirectBody`);
what it does not take goes through hypercorn's own raw send (its lock, and a wait for room). The end of the
body goes through ASGI again, so h11 writes the last chunk and keeps its connection state. Anything else (TLS,
HTTP/2, a HEAD, another server, a hypercorn whose objects look different) is written the ordinary ASGI way
(:class:`AsgiBody`): the direct path is an optimisation, never a requirement."""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import h11
import trio
from h11._writers import ChunkedWriter, Http10Writer
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.tcp_server import TCPServer
from quart import Response
from quart.utils import encode_headers
from quart_trio.asgi import TrioASGIHTTPConnection


async def _no_body() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # an async generator: quart sends no Content-Length


class StreamResponse(Response):
    """A streamed response whose body ``run(out)`` writes (see the module)."""

    def __init__(self, run: Callable[[Any], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(_no_body(), **kwargs)
        self.run = run


class AsgiBody:
    """Body chunks as ASGI messages: any server, any protocol."""

    direct = False

    def __init__(self, send: Any) -> None:
        self._send = send

    async def write(self, data: bytes) -> bool:
        if data:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        return True

    def write_nowait(self, data: bytes) -> bytes | None:
        raise NotImplementedError

    async def send_rest(self, rest: bytes) -> bool:
        raise NotImplementedError


class DirectBody:
    """Body chunks written straight to the socket of one hypercorn HTTP/1 connection (see the module)."""

    direct = True

    def __init__(self, tcp: TCPServer, sock: trio.SocketStream, chunked: bool) -> None:
        self._tcp = tcp
        self._sock = sock
        self._chunked = chunked

    @classmethod
    def of(cls, send: Any) -> DirectBody | None:
        """The direct writer of the connection this ASGI ``send`` answers on, once the response head has been
        sent; None when that connection is not plain HTTP/1 on hypercorn's trio worker in its body state."""
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, HTTPStream) or getattr(send, "__name__", "") != "app_send":
            return None
        proto = getattr(stream.send, "__self__", None)
        if not isinstance(proto, H11Protocol):
            return None
        tcp = getattr(proto.send, "__self__", None)
        if not isinstance(tcp, TCPServer) or not isinstance(getattr(tcp, "send_lock", None), trio.Lock):
            return None
        sock = getattr(tcp, "stream", None)
        conn = getattr(proto, "connection", None)
        if type(sock) is not trio.SocketStream or not isinstance(conn, h11.Connection) \
                or conn.our_state is not h11.SEND_BODY:
            return None
        writer = getattr(conn, "_writer", None)
        if isinstance(writer, ChunkedWriter):
            return cls(tcp, sock, chunked=True)
        if isinstance(writer, Http10Writer):
            return cls(tcp, sock, chunked=False)
        return None  # a Content-Length body (a HEAD): hypercorn's way

    def write_nowait(self, data: bytes) -> bytes | None:
        """Frame one chunk and send what the kernel takes now; the bytes it did not take (b"": all sent), or
        None when the connection is gone. Never waits."""
        if not data:
            return b""
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self._tcp.send_lock.locked():  # hypercorn is in the middle of a write of its own
            return data
        fd = self._sock.socket.fileno()  # read and used with no await between: never a reused descriptor
        if fd < 0:
            return None
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError:  # reset, broken pipe: the client has gone
            return None
        return data[sent:] if sent < len(data) else b""

    async def send_rest(self, rest: bytes) -> bool:
        """Send what write_nowait left, through hypercorn's raw send (its lock; waits for room). False once
        the connection is gone."""
        if rest:
            await self._tcp.protocol_send(RawData(data=rest))
        return self._sock.socket.fileno() >= 0

    async def write(self, data: bytes) -> bool:
        rest = self.write_nowait(data)
        if rest is None:
            return False
        return await self.send_rest(rest) if rest else True


# a record per TCP connection of hypercorn's (its HTTP/1 protocol object lives exactly as long as the
# connection): what authentication learnt of the connection's peer (aegisd/surfaces/http/auth.py)
_connections: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class HTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's ASGI HTTP handler, writing a :class:`StreamResponse`'s body with :class:`DirectBody` when
    the connection allows, else :class:`AsgiBody`. Each request's scope carries its TCP connection's record
    (``aegis.connection``) when hypercorn serves it over HTTP/1. The app's lean reads (``app.lean_reads``,
    aegisd/surfaces/http/_lean.py) answer the requests they take before quart sees them."""

    async def __call__(self, receive: Any, send: Any) -> None:
        stream = getattr(send, "__self__", None)
        proto = getattr(getattr(stream, "send", None), "__self__", None) if isinstance(stream, HTTPStream) \
            else None
        if isinstance(proto, H11Protocol):
            record = _connections.get(proto)
            if record is None:
                record = _connections[proto] = {}
            self.scope["aegis.connection"] = record  # type: ignore[typeddict-unknown-key]
        lean = getattr(self.app, "lean_reads", None)  # the pollers' reads (aegisd/surfaces/http/_lean.py)
        if lean is not None and await lean.serve(self.scope, send):
            return
        await super().__call__(receive, send)

    async def _send_response(self, send: Any, response: Any) -> None:
        if not isinstance(response, StreamResponse):
            await super()._send_response(send, response)
            return
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": encode_headers(response.headers)})
        await response.run(DirectBody.of(send) or AsgiBody(send))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
