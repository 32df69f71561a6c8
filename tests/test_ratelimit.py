"""The one rate-limiting primitive (aegisd/core/ratelimit.py) alone, on a fake clock."""

from __future__ import annotations

from aegisd.core.ratelimit import RateLimiter, Window


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_counts_expires_and_waits() -> None:
    w = Window()
    for t in (0.0, 10.0, 20.0):
        w.add(t)
    assert len(w) == 3 and w.oldest == 0.0 and w.newest == 20.0
    assert w.wait(30.0, 4, 60.0) == 0.0
    assert w.wait(30.0, 3, 60.0) == 30.0  # the oldest leaves the window at 60
    assert w.count(65.0, 60.0) == 2 and len(w) == 3  # count forgets nothing
    w.expire(65.0, 60.0)
    assert len(w) == 2 and w.oldest == 10.0
    assert w.wait(69.9999, 2, 60.0) == 0.001  # never 0.0 while refused (at least a millisecond)


def test_window_cap_keeps_the_last() -> None:
    w = Window(cap=2)
    for t in (1.0, 2.0, 3.0):
        w.add(t)
    assert len(w) == 2 and w.oldest == 2.0


def test_limiter_allows_limit_per_window_per_key() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock)
    assert [rl.hit("a", 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.hit("a", 3) == 60.0  # refused: the first leaves the window in 60 s
    assert rl.hit("b", 3) == 0.0  # keys are apart
    assert rl.count("a") == 3  # a refused request is not counted
    clock.now += 30
    assert rl.hit("a", 3) == 30.0
    clock.now += 30
    assert rl.hit("a", 3) == 0.0
    assert rl.count("a") == 1


def test_limiter_explicit_now_and_window() -> None:
    rl = RateLimiter()
    assert rl.hit("k", 1, 10.0, now=5.0) == 0.0
    assert rl.hit("k", 1, 10.0, now=6.0) == 9.0
    assert rl.hit("k", 1, 10.0, now=15.0) == 0.0
    assert rl.count("k", 10.0, now=16.0) == 1 and rl.count("unknown") == 0


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    rl = RateLimiter(max_keys=4, clock=clock)
    for i in range(4):
        rl.hit(f"k{i}", 10)
    clock.now += 61  # all idle: a new key forgets them
    rl.hit("new", 10)
    assert rl.count("k0") == 0 and rl.count("new") == 1
    for i in range(3):
        rl.hit(f"busy{i}", 10)
    rl.hit("more", 10)  # full of busy keys: the oldest half goes
    assert len(rl._hits) <= 4
