"""JSON-lines framing, sans-IO: bytes in, complete lines out, one line at most ``max_line`` bytes. Used by both
ends the daemon reads lines from: the ACP connection to an agent (aegisd/acp/_connection.py) and the control
socket (aegisd/surfaces/control.py). The adapters feed what they receive and take lines one at a time, so
lines before a bad one are still served in order."""

from __future__ import annotations


class LineTooLong(ValueError):
    """A line longer than the limit: ``complete`` when its newline came, else it is still arriving (``length``
    is then what has arrived)."""

    def __init__(self, length: int, limit: int, *, complete: bool) -> None:
        self.length = length
        self.limit = limit
        self.complete = complete
        super().__init__(f"a line of {length} bytes (limit {limit})" if complete
                         else f"a line longer than {limit} bytes (limit {limit})")


class LineFramer:
    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._start = 0  # where the next line begins in _buf (consumed bytes are dropped lazily)
        self._scanned = 0  # bytes of _buf from _start known to hold no newline

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received of a line not finished yet (nothing after the lines taken: 0)."""
        return len(self._buf) - self._start

    def next_line(self) -> bytes | None:
        """The next complete line, without its newline (blank ones too: what a blank line means is the
        caller's); None until more bytes come. Raises :class:`LineTooLong` for a line over the limit, complete or
        still arriving."""
        buf = self._buf
        nl = buf.find(b"\n", self._start + self._scanned)
        if nl < 0:
            del buf[:self._start]
            self._start = 0
            self._scanned = len(buf)
            if len(buf) > self.max_line:
                raise LineTooLong(len(buf), self.max_line, complete=False)
            return None
        line = bytes(buf[self._start:nl])
        self._start = nl + 1
        self._scanned = 0
        if len(line) > self.max_line:
            raise LineTooLong(len(line), self.max_line, complete=True)
        return line
