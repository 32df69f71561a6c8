"""The HTTP error envelope, `{error, code, message, requestId}` (+ `details`), mapped from exceptions in this one
place: domain errors (aegisd/core/errors.py) keep their status and code, quart's own (no route, wrong method,
body too large) get codes of the same vocabulary, and anything else is a 500 INTERNAL_ERROR."""

from __future__ import annotations

import os
from typing import Any

import msgspec
from quart import Response

from aegisd.core.errors import AegisError

encoder = msgspec.json.Encoder()

HTTP_CODES = {400: "VALIDATION_ERROR", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def request_id(headers: Any) -> str:
    """The id of this request: the client's own X-Request-Id if it is short plain ASCII, else a new one."""
    rid = headers.get("X-Request-Id", "")
    # os.urandom(8).hex() is secrets.token_hex(8) without its three calls in Python
    return rid if 0 < len(rid) <= 64 and rid.isascii() and rid.isprintable() else os.urandom(8).hex()


def json_response(data: Any, status: int = 200, request_id: str | None = None) -> Response:
    resp = Response(encoder.encode(data), status=status, content_type="application/json")
    if request_id:
        resp.headers["X-Request-Id"] = request_id
    return resp


def envelope(exc: AegisError, request_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and extra headers of the answer to a domain error."""
    body: dict[str, Any] = {"error": exc.message, "code": exc.code, "message": exc.message,
                            "requestId": request_id}
    if exc.details is not None:
        body["details"] = exc.details
        if exc.spread_details and isinstance(exc.details, dict):
            body = {**exc.details, **body}
    headers: dict[str, str] = {}
    if exc.status == 429 or (isinstance(exc.details, dict) and "retryAfter" in exc.details):
        retry = exc.details.get("retryAfter", 1) if isinstance(exc.details, dict) else 1
        headers["Retry-After"] = str(retry)
    return exc.status, body, headers


def error_response(exc: AegisError, request_id: str) -> Response:
    status, body, headers = envelope(exc, request_id)
    resp = json_response(body, status, request_id)
    resp.headers.update(headers)
    return resp


def http_envelope(status: int | None, description: str | None, *, method: str, path: str, max_body: int,
                  request_id: str) -> tuple[int, dict[str, Any]]:
    """Status and body of the answer to one of quart's (werkzeug's) HTTP exceptions."""
    status = status or 500
    code = HTTP_CODES.get(status, "HTTP_ERROR")
    msg = {404: f"no route for {method} {path}",
           405: f"method {method} not allowed on {path}",
           413: f"request body larger than {max_body} bytes"}.get(status, description or "")
    return status, {"error": msg, "code": code, "message": msg, "requestId": request_id}


def internal_envelope(request_id: str) -> dict[str, Any]:
    """The body of a 500: says nothing of the fault (the log has it, under the same request id)."""
    return {"error": "internal error", "code": "INTERNAL_ERROR", "message": "internal error",
            "requestId": request_id}
