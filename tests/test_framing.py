"""The one JSON-lines framer (aegisd/core/framing.py), sans-IO."""

from __future__ import annotations

import pytest

from aegisd.core.framing import LineFramer, LineTooLong


def lines(f: LineFramer) -> list[bytes]:
    out = []
    while (line := f.next_line()) is not None:
        out.append(line)
    return out


def test_lines_across_chunks() -> None:
    f = LineFramer(100)
    f.feed(b'{"a":1}\n{"b"')
    assert lines(f) == [b'{"a":1}'] and f.pending == 4
    f.feed(b':2}\n\n  \n{"c":3}')
    assert lines(f) == [b'{"b":2}', b"", b"  "] and f.pending == 7
    f.feed(b"\n")
    assert lines(f) == [b'{"c":3}'] and f.pending == 0


def test_byte_at_a_time() -> None:
    f = LineFramer(100)
    out = []
    for b in b"one\ntwo\n":
        f.feed(bytes([b]))
        out += lines(f)
    assert out == [b"one", b"two"]


def test_line_too_long_while_arriving() -> None:
    f = LineFramer(10)
    f.feed(b"ok\n" + b"x" * 11)
    assert f.next_line() == b"ok"  # the lines before are served first
    with pytest.raises(LineTooLong) as exc:
        f.next_line()
    assert not exc.value.complete and exc.value.limit == 10 and "longer than 10 bytes" in str(exc.value)


def test_complete_line_too_long() -> None:
    f = LineFramer(10)
    f.feed(b"x" * 11 + b"\nok\n")
    with pytest.raises(LineTooLong) as exc:
        f.next_line()
    assert exc.value.complete and exc.value.length == 11 and str(exc.value) == "a line of 11 bytes (limit 10)"


def test_exactly_the_limit() -> None:
    f = LineFramer(10)
    f.feed(b"x" * 10)
    assert f.next_line() is None
    f.feed(b"\n")
    assert f.next_line() == b"x" * 10
