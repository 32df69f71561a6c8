"""Untrusted input: JSON from peers (HTTP bodies, socket frames, WebSocket messages) decoded in one place, and
the values every operation receives checked once, so that malformed input is a ValidationError (400) at the
edge and never an exception deeper in, or a value that breaks later when it is stored, logged or streamed.

Refused: bytes that are not UTF-8, JSON that is malformed or nested deeper than MAX_DEPTH, numbers beyond a
double or a signed 64-bit integer (what every store and client can hold), non-finite floats, and strings
(keys included) holding a lone UTF-16 surrogate (`"\\ud800"`: not encodable as UTF-8, so it would fail every
later write)."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from aegisd.core.errors import ValidationError

MAX_DEPTH = 64  # arrays and objects inside each other
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_decoder = msgspec.json.Decoder()


def decode_json(data: bytes | str, *, what: str = "request body", checked: bool = True) -> Any:
    """The JSON value in ``data``, checked with :func:`check` (unless ``checked=False``: the caller checks it);
    any defect is a ValidationError naming ``what``."""
    try:
        value = _decoder.decode(data)
    except msgspec.DecodeError as exc:  # malformed JSON, a lone surrogate escape, 1e400 (ValidationError)
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{what} holds bytes that are not valid UTF-8") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    if checked:
        check(value, what=what)
    return value


def check(value: Any, *, what: str = "input") -> None:
    """Refuse values no store, log or client can hold (see the module's docstring)."""
    if not _plain(value, 0):
        _walk(value, what)


def _plain(v: Any, depth: int) -> bool:
    """True when `_walk` would find nothing to refuse, decided quickly for what requests mostly hold: builtin
    scalars (ASCII strings, in-range integers, finite floats) in builtin dicts and lists. False for anything
    else (a defect, a non-ASCII string, a subclass, a value nested deeper than MAX_DEPTH): `_walk` decides it
    and says what is wrong. Recursive, but never deeper than MAX_DEPTH levels."""
    t = type(v)
    if t is str:
        return v.isascii()
    if t is int:
        return INT_MIN <= v <= INT_MAX
    if v is None or t is bool:
        return True
    if t is float:
        return math.isfinite(v)
    if t is dict:
        if depth >= MAX_DEPTH:
            return False
        for k, item in v.items():
            if type(k) is str:
                if not k.isascii():
                    return False
            elif isinstance(k, str):  # a str subclass: _walk checks it
                return False
            ti = type(item)  # the commonest items without a call
            if ti is str:
                if not item.isascii():
                    return False
            elif ti is int:
                if not INT_MIN <= item <= INT_MAX:
                    return False
            elif item is not None and ti is not bool and not _plain(item, depth + 1):
                return False
        return True
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            return False
        for item in v:
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def _walk(value: Any, what: str) -> None:
    """The full check, raising on the first defect. Iterative: a deep value cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _check_str(v, what)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not INT_MIN <= v <= INT_MAX:
                raise ValidationError(f"{what}: an integer of {v.bit_length()} bits is out of range (at most a "
                                      "signed 64-bit integer)")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValidationError(f"{what}: number {v} is not finite")
        elif isinstance(v, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise ValidationError(f"{what} is nested deeper than {MAX_DEPTH} levels")
            if isinstance(v, dict):
                for k, item in v.items():
                    if isinstance(k, str):
                        _check_str(k, what)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)


def _check_str(s: str, what: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{what}: a string holds a lone UTF-16 surrogate (character {exc.start}), "
                              "which is not valid Unicode") from None

