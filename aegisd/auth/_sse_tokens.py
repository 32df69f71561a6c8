"""Short-lived, single-use tokens for EventSource clients (which cannot send headers).

Time is trio's clock, so tests can run it with the autojump clock."""

from __future__ import annotations

import secrets
from typing import Any

import trio

from aegisd.core.errors import RateLimited

TTL_S = 60.0
PER_OWNER = 5


class SseTokens:
    def __init__(self, *, ttl: float = TTL_S, per_owner: int = PER_OWNER) -> None:
        self.ttl = ttl
        self.per_owner = per_owner
        self._tokens: dict[str, tuple[Any, str, float]] = {}  # token -> (principal, owner, deadline)

    def _expire(self) -> None:
        now = trio.current_time()
        for t in [t for t, (_, _, deadline) in self._tokens.items() if deadline <= now]:
            del self._tokens[t]

    def mint(self, principal: Any, owner: str) -> tuple[str, float]:
        """A new token for ``principal``; returns (token, seconds until it expires)."""
        self._expire()
        if sum(1 for _, o, _ in self._tokens.values() if o == owner) >= self.per_owner:
            raise RateLimited(f"at most {self.per_owner} outstanding SSE tokens per key", details={"retryAfter": 5})
        token = "sse_" + secrets.token_hex(32)
        self._tokens[token] = (principal, owner, trio.current_time() + self.ttl)
        return token, self.ttl

    def consume(self, token: str) -> Any | None:
        """The principal of a valid token, which is used up; None if unknown, used or expired."""
        entry = self._tokens.pop(token, None)
        if entry is None or entry[2] <= trio.current_time():
            return None
        return entry[0]
