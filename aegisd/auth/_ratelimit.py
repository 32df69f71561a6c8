"""Sliding-window rate limits per string key, in bounded memory."""

from __future__ import annotations

import collections
import time


class RateLimiter:
    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._hits: dict[str, collections.deque[float]] = {}
        self._max_keys = max_keys

    def hit(self, key: str, limit: int, window_s: float = 60.0, now: float | None = None) -> float:
        """Count one request. Returns 0.0 when allowed, else the seconds until one is allowed again."""
        now = time.monotonic() if now is None else now
        q = self._hits.get(key)
        if q is None:
            if len(self._hits) >= self._max_keys:
                self._forget_idle(now, window_s)
            q = self._hits[key] = collections.deque()
        while q and now - q[0] >= window_s:
            q.popleft()
        if len(q) >= limit:
            return max(0.001, window_s - (now - q[0]))
        q.append(now)
        return 0.0

    def count(self, key: str, window_s: float = 60.0, now: float | None = None) -> int:
        """Requests counted for this key within the window (without counting one more)."""
        now = time.monotonic() if now is None else now
        return sum(1 for t in self._hits.get(key, ()) if now - t < window_s)

    def _forget_idle(self, now: float, window_s: float) -> None:
        for k in [k for k, q in self._hits.items() if not q or now - q[-1] >= window_s]:
            del self._hits[k]
        if len(self._hits) >= self._max_keys:  # still full: drop the oldest half
            for k in list(self._hits)[: self._max_keys // 2]:
                del self._hits[k]
