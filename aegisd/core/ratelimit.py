"""Sliding windows of event times: the one rate-limiting primitive of the daemon. The HTTP request limits (per
IP, per key, per session's agent) count requests in a :class:`RateLimiter`; the authentication throttle
(aegisd/auth/_throttle.py) counts failures in :class:`Window` s. Pure: time comes from a clock the caller
chooses (``time.monotonic`` by default, a fake one in tests)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable


class Window:
    """The times of recent events, oldest first; with ``cap``, only the last ``cap`` are kept."""

    __slots__ = ("_times",)

    def __init__(self, cap: int | None = None) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=cap)

    def __len__(self) -> int:
        return len(self._times)

    @property
    def oldest(self) -> float:
        return self._times[0]

    @property
    def newest(self) -> float:
        return self._times[-1]

    def add(self, now: float) -> None:
        self._times.append(now)

    def expire(self, now: float, window_s: float) -> None:
        """Forget the events that left the window."""
        t = self._times
        while t and now - t[0] >= window_s:
            t.popleft()

    def count(self, now: float, window_s: float) -> int:
        """Events within the window, without forgetting the others."""
        return sum(1 for t in self._times if now - t < window_s)

    def wait(self, now: float, limit: int, window_s: float) -> float:
        """Seconds until fewer than ``limit`` events are within the window (0.0: now). Expires first."""
        self.expire(now, window_s)
        if len(self._times) >= limit:
            return max(0.001, self._times[0] + window_s - now)
        return 0.0


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per string key (a sliding window), in bounded memory: at most
    ``max_keys`` keys, idle ones forgotten first."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._hits: dict[str, Window] = {}
        self._max_keys = max_keys
        self._clock = clock

    def hit(self, key: str, limit: int, window_s: float = 60.0, now: float | None = None) -> float:
        """Count one request. Returns 0.0 when allowed, else the seconds until one is allowed again (a refused
        request is not counted)."""
        now = self._clock() if now is None else now
        w = self._hits.get(key)
        if w is None:
            if len(self._hits) >= self._max_keys:
                self._forget_idle(now, window_s)
            w = self._hits[key] = Window()
        wait = w.wait(now, limit, window_s)
        if not wait:
            w.add(now)
        return wait

    def count(self, key: str, window_s: float = 60.0, now: float | None = None) -> int:
        """Requests counted for this key within the window (without counting one more)."""
        w = self._hits.get(key)
        return w.count(self._clock() if now is None else now, window_s) if w is not None else 0

    def _forget_idle(self, now: float, window_s: float) -> None:
        for k in [k for k, w in self._hits.items() if not w or now - w.newest >= window_s]:
            del self._hits[k]
        if len(self._hits) >= self._max_keys:  # still full: drop the oldest half
            for k in list(self._hits)[: self._max_keys // 2]:
                del self._hits[k]
