"""What a store knows of its own health, and the one way the daemon's own writes wait for it.

A store marks itself ``degraded`` (with the reason) when its server or directory fails it, and ``ok`` again when a
call or its monitor succeeds. While degraded, operations fail at once with STORE_UNAVAILABLE (503 + Retry-After);
the writes the daemon makes on its own (a session's transcript, events and record) go through
:func:`until_stored`, which tries again with backoff until the store is back, so nothing is dropped and nothing
crashes. At shutdown the daemon bounds that wait: :meth:`StoreHealth.give_up` makes every waiting and running
store call fail with StoreUnavailable, so the daemon can stop within the unit's stop timeout."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import structlog
import trio

from aegisd.core import retry
from aegisd.core.errors import StoreUnavailable

log = structlog.get_logger("aegisd.store")

T = TypeVar("T")

# the daemon's own writes: quickly at first (a dropped connection is usually back at once), then every 2 s
STORE_RETRY = retry.Backoff((0.05, 0.2, 0.5, 1.0), factor=2.0, cap=2.0)


class StoreHealth:
    """``ok`` or ``degraded`` with a reason. ``on_change(ok, reason)`` is called on every change (the daemon
    alerts once per outage from it). Thread-safe enough for the stores' worker threads: the state is two plain
    attributes; callbacks are made from trio, by :meth:`sync`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reason: str | None = None
        self.since: float | None = None  # epoch seconds the outage began
        self.outages = 0
        self.given_up: str | None = None
        self.on_change: Callable[[bool, str | None], None] | None = None
        self._reported_ok = True
        self._scopes: set[trio.CancelScope] = set()
        self._recovered = trio.Event()

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "degraded"

    def down(self, reason: str) -> None:
        """The store failed: degraded (from any thread)."""
        if self.reason is None:
            self.since = time.time()
            self.outages += 1
        self.reason = reason

    def up(self) -> None:
        """The store answered again (from any thread)."""
        self.reason = None
        self.since = None

    def sync(self) -> None:
        """Report a change since the last call (in trio: logs, ``on_change``, wakes waiting writes)."""
        if self.ok == self._reported_ok:
            return
        self._reported_ok = self.ok
        if self.ok:
            log.warning("store.recovered", store=self.name)
            self._recovered.set()
            self._recovered = trio.Event()
        else:
            log.error("store.degraded", store=self.name, reason=self.reason)
        if self.on_change is not None:
            try:
                self.on_change(self.ok, self.reason)
            except Exception:  # a notifier's bug must not fail a store call
                log.exception("store.health_callback_failed")

    def unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(f"the {self.name} store is unavailable: {self.given_up or self.reason or 'failing'}")

    def check(self) -> None:
        """Fail at once while degraded or given up (an operation must not wait for an outage)."""
        if self.given_up is not None or self.reason is not None:
            raise self.unavailable()

    def give_up(self, reason: str) -> None:
        """Stop waiting for the store (shutdown bound passed): every call in flight and every write waiting in
        :func:`until_stored` fails with StoreUnavailable from now on."""
        if self.given_up is None:
            self.given_up = reason
            log.error("store.given_up", store=self.name, reason=reason)
        for scope in list(self._scopes):
            scope.cancel()
        self._recovered.set()

    @contextmanager
    def bounded(self) -> Iterator[None]:
        """Around one store call that may block in a worker thread: cancelled by :meth:`give_up` (the call then
        raises StoreUnavailable), whatever shields its caller."""
        if self.given_up is not None:
            raise self.unavailable()
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise self.unavailable()

    async def wait_recovered(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._recovered.wait()


async def until_stored(health: StoreHealth, call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """``call()`` until it succeeds: the daemon's own writes, which must neither be dropped nor crash anything
    while the store is away. Raises StoreUnavailable only once the daemon gave up on the store (shutdown)."""
    retrier = retry.Retrier(STORE_RETRY)
    while True:
        if health.given_up is not None:
            raise health.unavailable()
        try:
            result = await call()
        except StoreUnavailable as exc:
            if health.given_up is not None:
                raise
            if retrier.failures == 0:
                log.warning("store.write_waiting", what=what, error=exc.message)
            retrier.failures += 1
            delay = STORE_RETRY.delay(retrier.failures) or 2.0
            await health.wait_recovered(delay)
            continue
        if retrier.failures:
            log.info("store.write_done", what=what, attempts=retrier.attempt)
        return result
