"""The baselines `make bench` measures our surfaces against, each started as its own process:

    python bench/_baselines.py echo SOCKET   a raw trio echo server on a Unix socket: each line answered by
                                             one send (the control socket's ceiling)
    python bench/_baselines.py quart N [--headers]
                                             a bare quart-trio app on hypercorn's trio worker, one JSON route
                                             (GET /v1/sessions, a body of N bytes like ours); prints its URL.
                                             --headers: the answer also carries the six headers ours has and
                                             this one has not (same names, values of the same length)

Both print one line when they are ready, then serve until killed."""

from __future__ import annotations

import sys


def echo(path: str) -> None:
    import trio

    async def conn(stream: trio.SocketStream) -> None:
        # a request/answer server with no work in between: each line read is answered with one send
        async with stream:
            buf = b""
            while data := await stream.receive_some(65536):
                *lines, buf = (buf + data).split(b"\n")
                for line in lines:
                    await stream.send_all(line + b"\n")

    async def main() -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(1024)
        print("ready", flush=True)
        await trio.serve_listeners(conn, [trio.SocketListener(sock)])

    trio.run(main)


# what our GET /v1/sessions answer carries and the bare one does not (aegisd/surfaces/http/app.py, routes.py)
OUR_HEADERS = (("ETag", 'W/"' + "0" * 24 + '"'), ("Cache-Control", "private, no-cache"), ("X-Request-Id", "0" * 16),
               ("X-Aegis-API-Version", "1"), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"))


def quart(body_bytes: int, headers: bool = False) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart import Response
    from quart_trio import QuartTrio

    app = QuartTrio("bare")
    body = b'{"sessions":[],"pagination":{},"pad":"' + b"x" * max(0, body_bytes - 40) + b'"}'

    @app.get("/v1/sessions")
    async def sessions() -> Response:
        resp = Response(body, content_type="application/json")
        for name, value in OUR_HEADERS if headers else ():
            resp.headers.add(name, value)
        return resp

    async def main() -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        async with trio.open_nursery() as n:
            binds = await n.start(serve, app, config)
            print(binds[0], flush=True)

    trio.run(main)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2])
    else:
        quart(int(sys.argv[2]) if len(sys.argv) > 2 else 200, "--headers" in sys.argv[3:])
