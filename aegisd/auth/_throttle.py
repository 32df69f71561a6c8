"""Throttling of authentication failures that slows attackers down without locking the user out.

A lock per client IP alone is a lock on the user: on loopback that IP is the user's own machine, so any local
process presenting wrong tokens would shut the user's valid token out. Failures are therefore counted per IP
*and* per presented credential, known only by its fingerprint (the first 16 hex digits of its SHA-256; the
credential itself is never stored):

- **per credential**: after `per_credential` failures of one credential from one IP within `window_s`, that
  credential from that IP is answered 429 until its oldest failure leaves the window (a client retrying a
  wrong or revoked token is slowed down; other credentials are not);
- **per IP**: a brute-forcer tries a new credential on every request, so after `distinct_per_ip` different
  failing credentials from one IP within the window, that IP may only use credentials it has already proven
  valid (a small "known good" set of fingerprints per IP, least recently used out, kept across windows).
  Every other credential is answered 429 *without being verified*: the answer says nothing about whether a
  guess was right, so guessing runs at `distinct_per_ip` tries per window and IP, while the user's token from
  the same machine keeps working. An SSE token minted by such a caller is vouched for at once (it is new by
  nature), and leaves the set when it is used up.

Memory is bounded: at most `distinct_per_ip` failing fingerprints and `known_good` good ones per IP (failures
beyond the ceiling are not verified, so not recorded), and `max_ips` IPs (idle ones are forgotten first)."""

from __future__ import annotations

import collections
import hashlib
import math
import time
from collections.abc import Callable

from aegisd.core.errors import RateLimited
from aegisd.core.ratelimit import Window


def fingerprint(credential: str) -> str:
    """What the throttle keeps of a credential: enough to tell credentials apart, useless to present."""
    return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _Ip:
    __slots__ = ("failures", "good")

    def __init__(self) -> None:
        self.failures: dict[str, Window] = {}  # fingerprint -> times of its recent failures
        self.good: collections.OrderedDict[str, None] = collections.OrderedDict()  # proven valid here, LRU


class AuthThrottle:
    def __init__(self, *, per_credential: int = 5, distinct_per_ip: int = 10, window_s: float = 60.0,
                 known_good: int = 16, max_ips: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_credential = per_credential
        self.distinct_per_ip = distinct_per_ip
        self.window_s = window_s
        self.known_good = known_good
        self.max_ips = max_ips
        self._clock = clock
        self._ips: dict[str, _Ip] = {}

    # ---- the three calls around one verification -------------------------------------------------
    def wait(self, ip: str, credential: str) -> float:
        """Seconds before this credential may be verified from this IP; 0.0: verify it now."""
        st = self._ips.get(ip)
        if st is None:
            return 0.0
        now = self._clock()
        self._expire(st, now)
        fp = fingerprint(credential)
        times = st.failures.get(fp)
        if times is not None and (wait := times.wait(now, self.per_credential, self.window_s)):
            return wait
        if fp in st.good or len(st.failures) < self.distinct_per_ip:
            return 0.0
        # the IP's ceiling: it frees when the credential that failed least recently leaves the window
        return max(0.001, min(t.newest for t in st.failures.values()) + self.window_s - now)

    def guard(self, ip: str, credential: str) -> None:
        """RateLimited (429, with retryAfter) unless the credential may be verified now."""
        wait = self.wait(ip, credential)
        if wait:
            raise RateLimited("too many failed authentication attempts; try again later",
                              details={"retryAfter": math.ceil(wait)})

    def failed(self, ip: str, credential: str) -> None:
        now = self._clock()
        st = self._state(ip, now)
        self._expire(st, now)
        fp = fingerprint(credential)
        st.good.pop(fp, None)  # revoked or expired since it was proven
        times = st.failures.get(fp)
        if times is None:
            times = st.failures[fp] = Window(cap=self.per_credential)
        times.add(now)
        while len(st.failures) > self.distinct_per_ip:  # only when failures are reported without wait()
            del st.failures[min(st.failures, key=lambda k: st.failures[k].newest)]

    def succeeded(self, ip: str, credential: str, *, remember: bool = True) -> None:
        """A credential proven valid from this IP. ``remember=False`` for single-use credentials (SSE tokens):
        used up, they leave the known-good set rather than push reusable ones out of it."""
        fp = fingerprint(credential)
        st = self._ips.get(ip)
        if st is not None:
            st.failures.pop(fp, None)
            if not remember:
                st.good.pop(fp, None)
        if remember:
            self.vouch(ip, credential)

    def vouch(self, ip: str, credential: str) -> None:
        """Count a credential as known good from this IP: one proven valid there, or one just issued to a caller
        proven valid there (an SSE token, vouched for before its first use so that an attack from the same IP
        does not refuse it)."""
        fp = fingerprint(credential)
        st = self._state(ip, self._clock())
        st.good[fp] = None
        st.good.move_to_end(fp)
        while len(st.good) > self.known_good:
            st.good.popitem(last=False)

    # ---- bookkeeping ---------------------------------------------------------------------------
    def _expire(self, st: _Ip, now: float) -> None:
        for fp, t in list(st.failures.items()):
            t.expire(now, self.window_s)
            if not t:
                del st.failures[fp]

    def _state(self, ip: str, now: float) -> _Ip:
        st = self._ips.get(ip)
        if st is None:
            if len(self._ips) >= self.max_ips:
                self._forget(now)
            st = self._ips[ip] = _Ip()
        return st

    def _forget(self, now: float) -> None:
        """Make room: IPs with no recent failure and nothing proven first, then the oldest half."""
        for ip, st in list(self._ips.items()):
            self._expire(st, now)
            if not st.failures and not st.good:
                del self._ips[ip]
        if len(self._ips) >= self.max_ips:
            for ip in list(self._ips)[: self.max_ips // 2]:
                del self._ips[ip]
