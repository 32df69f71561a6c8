"""The event bus: one per daemon. It carries typed events (aegisd/core/events.py) in envelopes. Assigns
monotonic ids, keeps bounded replay rings in memory, persists events through the store (batched by a background
task), and fans out to subscribers. A slow subscriber never delays the sessions or other subscribers: its
bounded buffer overflows and it is dropped, after which its iterator ends with ``overflowed = True`` (clients
reconnect with the last id they saw and replay)."""

from __future__ import annotations

import collections

import structlog
import trio

from aegisd.core.events import SessionEvent, envelope
from aegisd.core.models import Event, now_ms
from aegisd.store import Store

log = structlog.get_logger("aegisd.events")

RING_PER_SESSION = 1000
RING_GLOBAL = 2000
# Ids published but not yet persisted when the daemon is SIGKILLed are lost; restarting past them by this
# margin keeps ids strictly monotonic for any client that saw them.
RESTART_ID_GAP = 10_000


class Subscription:
    def __init__(self, bus: EventBus, session_id: str | None, maxsize: int) -> None:
        self._bus = bus
        self.session_id = session_id
        self._send, self._recv = trio.open_memory_channel[Event](maxsize)
        self.overflowed = False
        self.closed = False
        self._replay: collections.deque[Event] = collections.deque()
        self._last_id = 0

    def _offer(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send.close()
            self._bus._subs.discard(self)

    def __aiter__(self) -> Subscription:
        return self

    def _fresh(self, event: Event) -> bool:
        """Skip what replay already delivered (live events buffered while replaying overlap it)."""
        if event.id <= self._last_id:
            return False
        self._last_id = event.id
        return True

    async def __anext__(self) -> Event:
        # a plain async iterator (not a generator): leaving a loop early needs no aclose()
        while True:
            if self._replay:
                event = self._replay.popleft()
            else:
                try:
                    event = await self._recv.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    raise StopAsyncIteration from None
            if self._fresh(event):
                return event

    def next_nowait(self) -> Event | None:
        """The next event if one is already waiting (replay or buffered), else None. Lets a writer batch
        a burst into one write."""
        while True:
            if self._replay:
                event = self._replay.popleft()
            else:
                try:
                    event = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    return None
            if self._fresh(event):
                return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        self._recv.close()


class EventBus:
    def __init__(self, store: Store | None = None) -> None:
        self._store = store
        self._next_id = 1
        self._rings: dict[str, collections.deque[Event]] = {}
        self._global: collections.deque[Event] = collections.deque(maxlen=RING_GLOBAL)
        self._subs: set[Subscription] = set()
        self._unsaved: list[Event] = []
        self._wake = trio.Event()
        self._flush_lock = trio.Lock()  # a flush returns once everything published before it is stored
        self._first_id = 1  # the first id of this daemon's life: older events are only in the store
        self.published = 0
        self.dropped_subscribers = 0

    async def open(self) -> None:
        if self._store is not None:
            last = await self._store.last_event_id()
            self._next_id = last + 1 + (RESTART_ID_GAP if last else 0)
        self._first_id = self._next_id

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, session_id: str, event: SessionEvent) -> Event:
        """Publish a typed event (aegisd/core/events.py); subscribers get its envelope, whose
        ``events.payload()`` is this very event."""
        ev = envelope(self._next_id, session_id, now_ms(), event)
        self._next_id += 1
        self.published += 1
        ring = self._rings.get(session_id)
        if ring is None:
            ring = self._rings[session_id] = collections.deque(maxlen=RING_PER_SESSION)
        ring.append(ev)
        self._global.append(ev)
        if self._store is not None:
            self._unsaved.append(ev)
            self._wake.set()
        for sub in list(self._subs):
            if sub.session_id is None or sub.session_id == session_id:
                sub._offer(ev)
                if sub.overflowed:
                    self.dropped_subscribers += 1
        return ev

    async def subscribe(self, *, session_id: str | None = None, after_id: int | None = None,
                        maxsize: int = 4096) -> Subscription:
        """A subscription receiving every event after ``after_id`` (replayed from the rings, or from the
        store when older), then live ones, without gaps or duplicates."""
        sub = Subscription(self, session_id, maxsize)
        self._subs.add(sub)  # registered before replay: live events are buffered meanwhile
        if after_id is not None:
            ring = self._global if session_id is None else self._rings.get(session_id)
            replay = [e for e in ring if e.id > after_id] if ring is not None else []
            # a ring holds every event of its scope since this daemon started, until it is full; a session
            # with no ring here (none of its events published since the start, or forgotten) is in the store
            if ring is None:
                complete_from = self._next_id
            elif ring.maxlen is not None and len(ring) == ring.maxlen:
                complete_from = ring[0].id
            else:
                complete_from = self._first_id
            if after_id + 1 < complete_from and self._store is not None:
                await self.flush()
                replay = await self._store.read_events(session_id=session_id, after_id=after_id, limit=10_000)
            sub._replay = collections.deque(replay)
        return sub

    def forget(self, session_id: str) -> None:
        self._rings.pop(session_id, None)

    async def flush(self) -> None:
        """Store every event published so far (waiting for a batch another flush has in flight)."""
        async with self._flush_lock:
            if self._store is not None and self._unsaved:
                batch, self._unsaved = self._unsaved, []
                await self._store.append_events(batch)

    async def run_persister(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    def close_all(self) -> None:
        for sub in list(self._subs):
            sub.close()
