"""aegisd.core.locks.held: a free lock is taken without a trip round the scheduler; a held one is waited for in
arrival order, exactly like ``async with lock``."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from aegisd.core.locks import held


async def test_a_free_lock_is_taken_without_yielding() -> None:
    lock = trio.Lock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as n:
        n.start_soon(other)  # runnable, but it only runs when this task yields
        async with held(lock):
            assert lock.locked() and ran == []
        assert not lock.locked() and ran == []
        # the plain form yields each time (the difference this module exists for); trio runs a round's tasks in
        # either order, so the other task may only get its turn at a later yield
        for _ in range(20):
            async with lock:
                pass
            if ran:
                break
        assert ran == ["other"]


async def test_a_held_lock_is_waited_for_in_arrival_order() -> None:
    lock = trio.Lock()
    order: list[int] = []

    async def take(i: int) -> None:
        async with held(lock):
            order.append(i)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as n:
        await lock.acquire()
        for i in range(5):
            n.start_soon(take, i)
            await trio.testing.wait_all_tasks_blocked()
        assert order == []  # all five wait while the lock is held
        lock.release()
    assert order == [0, 1, 2, 3, 4]
