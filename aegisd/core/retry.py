"""Trying again: one policy of delays (:class:`Backoff`, pure) and one trio runner (:class:`Retrier`), used by
every loop that retries — webhook and alert deliveries (aegisd/notify/), Telegram's long poll
(aegisd/surfaces/telegram.py)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class Backoff:
    """The delay before each retry. ``delays``: the first ones, in order; past them, the last one times
    ``factor`` per further failure, at most ``cap``. ``attempts``: how many attempts in all (None: no end)."""

    delays: tuple[float, ...] = ()
    attempts: int | None = None
    factor: float = 1.0
    cap: float = math.inf

    def delay(self, failures: int) -> float | None:
        """Seconds to wait after ``failures`` (>= 1) failed attempts in a row before the next; None: give up."""
        if self.attempts is not None and failures >= self.attempts:
            return None
        if failures <= len(self.delays):
            return self.delays[failures - 1]
        delay = self.delays[-1] if self.delays else 0.0
        for _ in range(failures - len(self.delays) if self.factor != 1.0 else 0):
            if delay >= self.cap:
                break
            delay *= self.factor
        return min(self.cap, delay)


NO_RETRY = Backoff(attempts=1)


class Retrier:
    """Counts failures in a row and sleeps the policy's delay after each (trio's clock, so tests can jump it)."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.failures = 0

    @property
    def attempt(self) -> int:
        """The number of the attempt about to be made (1 for the first)."""
        return self.failures + 1

    async def failed(self) -> bool:
        """Count a failed attempt and wait before the next one; False (at once) when the policy gives up."""
        self.failures += 1
        delay = self.policy.delay(self.failures)
        if delay is None:
            return False
        await trio.sleep(delay)
        return True

    def succeeded(self) -> None:
        self.failures = 0


async def run(policy: Backoff, attempt: Callable[[int], Awaitable[bool]]) -> tuple[bool, int]:
    """Call ``attempt(n)`` (n = 1, 2, …) until it returns True (done: it worked, or trying again would not help)
    or the policy gives up. Returns (done, attempts made)."""
    retrier = Retrier(policy)
    while True:
        n = retrier.attempt
        if await attempt(n):
            return True, n
        if not await retrier.failed():
            return False, n
