"""The HTTP request limits (aegisd/surfaces/http/ratelimits.py), alone, on a fake clock."""

from __future__ import annotations

import pytest

from aegisd.auth import Principal
from aegisd.core.errors import RateLimited
from aegisd.core.ratelimit import RateLimiter
from aegisd.surfaces.http.ratelimits import AGENT_RATE_PER_MIN, MASTER_RATE_PER_MIN, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limits(ip_per_min: int = 3, key_rate: int | None = 2) -> tuple[RateLimits, Clock]:
    clock = Clock()
    return RateLimits(RateLimiter(clock=clock), ip_per_min=ip_per_min, key_rate=lambda _: key_rate), clock


def test_per_ip() -> None:
    rl, clock = limits(ip_per_min=3)
    for _ in range(3):
        rl.ip("10.0.0.1")
    with pytest.raises(RateLimited, match="3 requests per minute per IP") as exc:
        rl.ip("10.0.0.1")
    assert exc.value.details == {"retryAfter": 61}
    rl.ip("10.0.0.2")  # another IP
    clock.now += 30
    with pytest.raises(RateLimited) as exc:
        rl.ip("10.0.0.1")
    assert exc.value.details == {"retryAfter": 31}
    clock.now += 30
    rl.ip("10.0.0.1")


def test_no_ip_limit() -> None:
    rl, _ = limits(ip_per_min=0)
    for _ in range(10_000):
        rl.ip("10.0.0.1")
    assert rl.limiter.count("ip:10.0.0.1") == 0


def test_per_key_and_master() -> None:
    rl, _ = limits(key_rate=2)
    key = Principal(kind="key", key_id="k1", role="operator")
    rl.principal(key)
    rl.principal(key)
    with pytest.raises(RateLimited, match="rate limit of 2 requests per minute exceeded"):
        rl.principal(key)
    rl.principal(Principal(kind="key", key_id="k2", role="operator"))  # each key its own
    master = Principal(kind="master", role="admin")
    for _ in range(MASTER_RATE_PER_MIN):
        rl.principal(master)
    with pytest.raises(RateLimited):
        rl.principal(master)


def test_key_without_its_own_limit_gets_100() -> None:
    rl, _ = limits(key_rate=None)
    key = Principal(kind="key", key_id="k1", role="operator")
    for _ in range(100):
        rl.principal(key)
    with pytest.raises(RateLimited):
        rl.principal(key)


def test_per_session_agent() -> None:
    rl, clock = limits()
    for _ in range(AGENT_RATE_PER_MIN):
        rl.agent("s1")
    with pytest.raises(RateLimited, match="per session's agent"):
        rl.agent("s1")
    rl.agent("s2")
    clock.now += 60
    rl.agent("s1")
