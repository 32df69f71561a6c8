"""The HTTP request limits, each a sliding minute in one :class:`aegisd.core.ratelimit.RateLimiter` (which
`/v1/analytics/rate-limits` reads): per client IP on every route (`ipRateLimit`), per session's agent, and per
caller (an API key's `rateLimit`, or the master token's)."""

from __future__ import annotations

from collections.abc import Callable

from aegisd.auth.principal import Principal
from aegisd.core.errors import RateLimited
from aegisd.core.ratelimit import RateLimiter

MASTER_RATE_PER_MIN = 6000
AGENT_RATE_PER_MIN = 1200  # a session's agent and its tools, over HTTP
WINDOW_S = 60.0


class RateLimits:
    def __init__(self, limiter: RateLimiter, *, ip_per_min: int, key_rate: Callable[[str], int | None]) -> None:
        """``ip_per_min``: 0 for no per-IP limit; ``key_rate``: an API key's own limit per minute, by key id."""
        self.limiter = limiter
        self.ip_per_min = ip_per_min
        self._key_rate = key_rate

    def ip(self, ip: str) -> None:
        """Count one request from this client IP; RateLimited (429, retryAfter) past its limit."""
        if self.ip_per_min <= 0:
            return
        wait = self.limiter.hit(f"ip:{ip}", self.ip_per_min, WINDOW_S)
        if wait:
            raise RateLimited(f"rate limit of {self.ip_per_min} requests per minute per IP exceeded",
                              details={"retryAfter": int(wait) + 1})

    def agent(self, session_id: str) -> None:
        """Count one request of a session's agent (or one of its tools)."""
        wait = self.limiter.hit(f"p:agent:{session_id}", AGENT_RATE_PER_MIN, WINDOW_S)
        if wait:
            raise RateLimited(f"rate limit of {AGENT_RATE_PER_MIN} requests per minute per session's agent "
                              "exceeded", details={"retryAfter": int(wait) + 1})

    def principal(self, principal: Principal) -> None:
        """Count one request of an authenticated caller: an API key by its own limit, the rest by the master's."""
        limit = self._key_rate(principal.key_id) if principal.kind == "key" and principal.key_id \
            else MASTER_RATE_PER_MIN
        wait = self.limiter.hit(f"p:{principal.kind}:{principal.key_id}", limit or 100, WINDOW_S)
        if wait:
            raise RateLimited(f"rate limit of {limit} requests per minute exceeded",
                              details={"retryAfter": int(wait) + 1})
