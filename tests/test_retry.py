"""The one retry helper (aegisd/core/retry.py): the policy alone, and the runner on trio's autojump clock."""

from __future__ import annotations

import trio
import trio.testing

from aegisd.core.retry import NO_RETRY, Backoff, Retrier, run


def test_fixed_schedule() -> None:
    b = Backoff((1.0, 5.0), attempts=3)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [1.0, 5.0, None, None]
    assert NO_RETRY.delay(1) is None


def test_exponential_with_cap_and_no_end() -> None:
    b = Backoff((1.0,), factor=2.0, cap=60.0)
    assert [b.delay(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert b.delay(10_000) == 60.0


def test_fixed_delay_forever() -> None:
    assert [Backoff((0.5,)).delay(n) for n in (1, 2, 50)] == [0.5, 0.5, 0.5]


async def test_run_sleeps_the_schedule(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[int, float]] = []
    start = trio.current_time()

    async def attempt(n: int) -> bool:
        seen.append((n, trio.current_time() - start))
        return n == 3

    assert await run(Backoff((1.0, 5.0), attempts=3), attempt) == (True, 3)
    assert seen == [(1, 0.0), (2, 1.0), (3, 6.0)]


async def test_run_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def never(n: int) -> bool:
        return False

    assert await run(Backoff((1.0, 5.0), attempts=3), never) == (False, 3)
    assert trio.current_time() - start == 6.0  # no wait after the last attempt
    assert await run(NO_RETRY, never) == (False, 1)


async def test_retrier_resets_on_success(autojump_clock: trio.testing.MockClock) -> None:
    r = Retrier(Backoff((1.0,), factor=2.0, cap=60.0))
    start = trio.current_time()
    assert await r.failed() and await r.failed()
    assert trio.current_time() - start == 3.0 and r.attempt == 3
    r.succeeded()
    assert r.attempt == 1
    assert await r.failed()
    assert trio.current_time() - start == 4.0
