"""The HTTP error mapping (aegisd/surfaces/http/errors.py), alone."""

from __future__ import annotations

from typing import Any

from aegisd.core.errors import AegisError, NotFound, RateLimited, ValidationError
from aegisd.surfaces.http.errors import envelope, error_response, http_envelope, internal_envelope, request_id


def test_domain_error_envelope() -> None:
    status, body, headers = envelope(NotFound("no session abc"), "rid1")
    assert status == 404 and headers == {}
    assert body == {"error": "no session abc", "code": NotFound.code, "message": "no session abc",
                    "requestId": "rid1"}


def test_details_and_spread_details() -> None:
    _, body, _ = envelope(ValidationError("bad", details={"field": "x"}), "r")
    assert body["details"] == {"field": "x"}

    class Spread(AegisError):
        code = "SPREAD"
        status = 409
        spread_details = True

    _, body, _ = envelope(Spread("busy", details={"status": "running", "code": "IGNORED"}), "r")
    assert body["status"] == "running" and body["code"] == "SPREAD" and body["details"]["status"] == "running"


def test_rate_limited_carries_retry_after() -> None:
    status, body, headers = envelope(RateLimited("slow down", details={"retryAfter": 7}), "r")
    assert status == 429 and headers == {"Retry-After": "7"}
    assert envelope(RateLimited("slow down"), "r")[2] == {"Retry-After": "1"}


async def test_error_response() -> None:
    resp = error_response(RateLimited("slow down", details={"retryAfter": 3}), "rid2")
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "3" and resp.headers["X-Request-Id"] == "rid2"
    assert (await resp.get_json())["requestId"] == "rid2"


def test_http_exceptions() -> None:
    kw: dict[str, Any] = {"method": "POST", "path": "/v1/nope", "max_body": 1024, "request_id": "r"}
    assert http_envelope(404, None, **kw) == (404, {"error": "no route for POST /v1/nope", "code": "NOT_FOUND",
                                                   "message": "no route for POST /v1/nope", "requestId": "r"})
    assert http_envelope(405, None, **kw)[1]["code"] == "METHOD_NOT_ALLOWED"
    assert http_envelope(413, None, **kw)[1]["message"] == "request body larger than 1024 bytes"
    assert http_envelope(400, "bad json", **kw)[1] == {"error": "bad json", "code": "VALIDATION_ERROR",
                                                       "message": "bad json", "requestId": "r"}
    assert http_envelope(418, "teapot", **kw)[1]["code"] == "HTTP_ERROR"
    assert http_envelope(None, None, **kw)[0] == 500


def test_internal_error_says_nothing() -> None:
    assert internal_envelope("r") == {"error": "internal error", "code": "INTERNAL_ERROR",
                                      "message": "internal error", "requestId": "r"}


def test_request_id() -> None:
    assert request_id({"X-Request-Id": "abc-123"}) == "abc-123"
    for bad in ("", "x" * 65, "é", "a\nb"):
        rid = request_id({"X-Request-Id": bad})
        assert rid != bad and len(rid) == 16
