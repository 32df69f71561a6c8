"""The client's line reader over a raw socket (`aegisctl.client._Lines`), which replaced ``socket.makefile``:
frames split over many reads, several frames in one read, a last line without its newline, EOF."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from aegisctl.client import Client, _Lines


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_lines_across_reads_and_several_in_one_read() -> None:
    a, b = pair()
    big = json.dumps({"x": "y" * 300_000}).encode() + b"\n"  # several 64 KiB reads
    writer = threading.Thread(target=lambda: (b.sendall(b"one\ntwo\n" + big + b"tail"), b.close()))
    writer.start()
    lines = _Lines(a)
    assert lines.readline() == b"one\n"
    assert lines.readline() == b"two\n"
    assert lines.readline() == big
    assert lines.readline() == b"tail"  # EOF ends the last line
    assert lines.readline() == b""
    writer.join()
    a.close()


def test_iterating_gives_every_line_until_eof() -> None:
    a, b = pair()
    b.sendall(b"".join(b"%d\n" % i for i in range(1000)))
    b.close()
    assert [int(line) for line in _Lines(a)] == list(range(1000))
    a.close()


def test_a_client_call_and_stream_over_a_socket_answered_by_hand(short_tmp: Path) -> None:
    """call() answers the frame of its id (skipping others) and stream() yields events to the final frame."""
    path = str(short_tmp / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve() -> None:
        for _ in range(2):
            conn, _addr = server.accept()
            req = json.loads(_Lines(conn).readline())
            if req["op"] == "session.follow":
                conn.sendall(b'{"event": {"n": 1}}\n{"event": {"n": 2}}\n{"id": 1, "ok": true}\n')
            else:
                answer = json.dumps({"id": req["id"], "ok": True, "result": req["params"]}).encode()
                conn.sendall(b'{"id": 99, "ok": true, "result": "not mine"}\n' + answer[:5])
                conn.sendall(answer[5:] + b"\n")
            conn.close()
    t = threading.Thread(target=serve)
    t.start()
    with Client(socket_path=path, timeout=10) as c:
        assert c.call("echo", a=1, b=None) == {"a": 1}
    assert [ev["n"] for ev in Client(socket_path=path, timeout=10).stream("session.follow")] == [1, 2]
    t.join()
    server.close()
