"""``async with held(lock)``: a trio lock taken without a scheduling point when it is free. ``async with lock``
always yields to the scheduler once, even uncontended; on the per-event path (the bus's persister, the file
store's appends, a session's saves) that is a trip round the run loop per lock per event, for nothing. Waiting for
a lock another task holds is unchanged (first come, first served); a free lock is taken at once, so the caller's
cancellation is noticed at its next real wait instead of here."""

from __future__ import annotations

import trio


class held:  # noqa: N801 (used like a function: ``async with held(lock)``)
    __slots__ = ("_lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
