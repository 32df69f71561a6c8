"""The control protocol's answers as the client reads them: the result of a frame, or the error it carries
(`ClientError`; `ConnectError` when the daemon cannot be reached), and the events of a stream. Shared by the
socket transport (`client`) and the HTTP one (`_http`); `aegisctl.client` exports the errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


class ClientError(Exception):
    """An error answered by the daemon (code, message, HTTP-like status)."""

    def __init__(self, code: str, message: str, status: int = 500, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details


class ConnectError(ClientError):
    """The daemon could not be reached."""

    def __init__(self, message: str) -> None:
        super().__init__("DAEMON_UNREACHABLE", message, 503)


def result(frame: dict[str, Any]) -> Any:
    if frame.get("ok"):
        return frame.get("result")
    err = frame.get("error") or {}
    raise ClientError(err.get("code", "INTERNAL_ERROR"), err.get("message", "error"), err.get("status", 500),
                      err.get("details"))


def events(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Events from a stream of response frames, until the final frame (raised if it is an error)."""
    for line in lines:
        frame = json.loads(line)
        if "event" in frame:
            yield frame["event"]
        else:
            result(frame)
            return
    raise ConnectError("aegisd closed the stream")
