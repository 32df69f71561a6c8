"""Request bodies: JSON objects only (a browser's form cannot post one: see _browser), at most MAX_BODY bytes."""

from __future__ import annotations

from typing import Any

from quart import Request

from aegisd.core.errors import ValidationError
from aegisd.core.input import decode_json

MAX_BODY = 1024 * 1024


async def json_body(req: Request, list_key: str | None = None) -> dict[str, Any]:
    """The JSON object in the request body ({} when empty). With ``list_key``, a JSON array is accepted too
    and becomes that key (the original's PUT /permissions takes a bare array)."""
    data = await req.get_data(cache=False)
    if not data or not data.strip():
        return {}
    parsed = decode_json(data, what="request body")
    if list_key is not None and isinstance(parsed, list):
        return {list_key: parsed}
    if not isinstance(parsed, dict):
        raise ValidationError("request body must be a JSON " + ("array or object" if list_key else "object"))
    return parsed
