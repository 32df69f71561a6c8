"""The event bus: one per daemon. It carries typed events (aegisd/core/events.py) in envelopes. Assigns
monotonic ids, keeps bounded replay rings in memory, persists events through the store (batched by a background
task), and fans out to subscribers. A slow subscriber never delays the sessions or other subscribers: its
bounded buffer overflows and it is dropped, after which its iterator ends with ``overflowed = True`` (clients
reconnect with the last id they saw and replay)."""

from __future__ import annotations

import collections
from collections.abc import Callable

import structlog
import trio

from aegisd.core.errors import StoreUnavailable
from aegisd.core.events import SessionEvent, envelope
from aegisd.core.locks import held
from aegisd.core.models import Event, now_ms
from aegisd.store import Store, until_stored

log = structlog.get_logger("aegisd.events")

RING_PER_SESSION = 1000
RING_GLOBAL = 2000
# Ids published but not yet persisted when the daemon is SIGKILLed are lost; restarting past them by this
# margin keeps ids strictly monotonic for any client that saw them. Each daemon stores where it started (before
# it publishes anything), so a daemon killed before it persisted a single event still pushes the next one past
# the ids it gave out, across any number of kills.
RESTART_ID_GAP = 10_000
_START_DOC = ("bus", "event-ids")  # {"start": the first id of the last daemon that opened the store}


class Subscription:
    """What one subscriber has yet to read: a plain queue the bus appends to (no channel, no task switch per
    event) and the consumer drains whole; it wakes the consumer only when that one waits."""

    def __init__(self, bus: EventBus, session_id: str | None, maxsize: int, local: bool = False,
                 kinds: frozenset[str] | None = None) -> None:
        self._bus = bus
        self.session_id = session_id
        self.local = local  # only the events of what this node runs (a cluster: each event is notified once)
        self.kinds = kinds  # only events of these kinds (a consumer that ignores the rest is not woken for them)
        self._maxsize = maxsize
        self._queue: collections.deque[Event] = collections.deque()
        self._wake: trio.Event | None = None  # set while the consumer waits
        self.overflowed = False
        self.closed = False
        self._replay: collections.deque[Event] = collections.deque()
        self._last_id = 0

    def _offer(self, event: Event) -> None:
        if self.closed or (self.kinds is not None and event.event not in self.kinds) \
                or (self.local and not self._bus.is_local(event)):
            return
        if len(self._queue) >= self._maxsize:
            self.overflowed = True
            self.close()
            return
        self._queue.append(event)
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._remove(self)
            if self._wake is not None:
                self._wake.set()

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
            event = self.next_nowait()
            if event is not None:
                return event
            if self.closed:  # what was queued before the close has been read
                raise StopAsyncIteration
            self._wake = trio.Event()
            try:
                await self._wake.wait()  # cancel-safe: nothing is taken until it returns
            finally:
                self._wake = None

    def next_nowait(self) -> Event | None:
        """The next event if one is already waiting (replay or queued), else None. Lets a writer batch
        a burst into one write."""
        while True:
            if self._replay:
                event = self._replay.popleft()
            elif self._queue:
                event = self._queue.popleft()
            else:
                return None
            if self._fresh(event):
                return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        self._queue.clear()


class EventBus:
    def __init__(self, store: Store | None = None) -> None:
        self._store = store
        self._next_id = 1
        self._rings: dict[str, collections.deque[Event]] = {}
        self._global: collections.deque[Event] = collections.deque(maxlen=RING_GLOBAL)
        # subscribers by the session they follow (None: every session), so a publish visits only its own
        self._subs: dict[str | None, set[Subscription]] = {}
        self._unsaved: list[Event] = []
        self._wake = trio.Event()
        self._flush_lock = trio.Lock()  # a flush returns once everything published before it is stored; batches
        # reach the store in order, even when one must be retried
        self._first_id = 1  # the first id of this daemon's life: older events are only in the store
        self.published = 0
        self.dropped_subscribers = 0
        # a cluster (the store numbers events): an event is delivered once stored, in the store's order, with the
        # other nodes' events read from the store when it announces them
        self._numbered = bool(store is not None and getattr(store, "assigns_event_ids", False))
        self._delivered = 0  # the highest id delivered here
        self._deliver_lock = trio.Lock()
        self._tail_wake = trio.Event()
        # whether this node made an event (a cluster: the node running its session); notifiers subscribe to those
        self.is_local: Callable[[Event], bool] = lambda event: True

    async def open(self) -> None:
        if self._store is not None and self._numbered:
            self._delivered = await self._store.last_event_id()
            self._next_id = self._first_id = self._delivered + 1
            return
        if self._store is not None:
            last = await self._store.last_event_id()
            mark = await self._store.doc_get(*_START_DOC)
            started = int(mark.get("start", 0)) if isinstance(mark, dict) else 0
            top = max(last, started)
            self._next_id = top + 1 + (RESTART_ID_GAP if top else 0)
            await self._store.doc_put(*_START_DOC, {"start": self._next_id})
        self._first_id = self._next_id

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, session_id: str, event: SessionEvent) -> Event:
        """Publish a typed event (aegisd/core/events.py); subscribers get its envelope, whose
        ``events.payload()`` is this very event. In a cluster it is numbered and delivered once stored."""
        if self._numbered:
            ev = envelope(0, session_id, now_ms(), event)
            self.published += 1
            self._unsaved.append(ev)
            self._wake.set()
            return ev
        ev = envelope(self._next_id, session_id, now_ms(), event)
        self._next_id += 1
        self.published += 1
        self._deliver(ev)
        if self._store is not None:
            self._unsaved.append(ev)
            self._wake.set()
        return ev

    def _deliver(self, ev: Event) -> None:
        session_id = ev.sessionId
        ring = self._rings.get(session_id)
        if ring is None:
            ring = self._rings[session_id] = collections.deque(maxlen=RING_PER_SESSION)
        ring.append(ev)
        self._global.append(ev)
        for key in (session_id, None):
            subs = self._subs.get(key)
            if subs:
                for sub in list(subs):  # each gets the same envelope; its frame is encoded once (surfaces)
                    sub._offer(ev)
                    if sub.overflowed:
                        self.dropped_subscribers += 1

    # ---- a cluster: events numbered by the store -----------------------------------------------
    async def _deliver_numbered(self, stored: list[Event]) -> None:
        """Deliver what this node stored, after whatever other nodes stored before it (read from the store: ids
        are visible in commit order, so every id below ours is there)."""
        async with self._deliver_lock:
            if stored and stored[0].id > self._delivered + 1:
                await self._catch_up_locked(upto=stored[0].id - 1)
            for ev in stored:
                if ev.id > self._delivered:
                    self._delivered = ev.id
                    self._next_id = ev.id + 1
                    self._deliver(ev)

    async def _catch_up_locked(self, upto: int | None = None) -> None:
        assert self._store is not None
        while upto is None or self._delivered < upto:
            batch = await self._store.read_events(session_id=None, after_id=self._delivered, limit=1000)
            for ev in batch:
                if upto is not None and ev.id > upto:
                    return
                if ev.id > self._delivered:
                    self._delivered = ev.id
                    self._next_id = ev.id + 1
                    self._deliver(ev)
            if len(batch) < 1000:
                return

    def poke(self) -> None:
        """Other nodes stored events (the store announced them): read and deliver them (run_tail)."""
        self._tail_wake.set()

    async def run_tail(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A cluster: deliver the events other nodes store, in id order, whenever the store announces some (and
        every second, in case an announcement was missed)."""
        task_status.started()
        if self._store is None or not self._numbered:
            return
        while True:
            with trio.move_on_after(1.0):
                await self._tail_wake.wait()
            self._tail_wake = trio.Event()
            try:
                async with self._deliver_lock:
                    await self._catch_up_locked()
            except StoreUnavailable:
                await trio.sleep(0.5)

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.session_id]

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def subscribe(self, *, session_id: str | None = None, after_id: int | None = None,
                        maxsize: int = 4096, local: bool = False,
                        kinds: frozenset[str] | None = None) -> Subscription:
        """A subscription receiving every event after ``after_id`` (replayed from the rings, or from the
        store when older), then live ones, without gaps or duplicates; with ``kinds``, only events of those
        kinds (the others neither queue nor wake it)."""
        sub = Subscription(self, session_id, maxsize, local, kinds)
        self._subs.setdefault(session_id, set()).add(sub)  # before replay: live ones queue meanwhile
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
            sub._replay = collections.deque(e for e in replay if kinds is None or e.event in kinds)
        return sub

    def forget(self, session_id: str) -> None:
        self._rings.pop(session_id, None)

    async def flush(self) -> None:
        """Store every event published so far (waiting for a batch another flush has in flight).
        StoreUnavailable: they stay queued, in order, for the next try."""
        async with held(self._flush_lock):
            if self._store is not None and self._unsaved:
                batch, self._unsaved = self._unsaved, []
                try:
                    stored = await self._store.append_events(batch)
                except Exception:
                    self._unsaved[:0] = batch
                    raise
                if self._numbered:
                    await self._deliver_numbered(stored or [])

    async def _flush_until_stored(self) -> None:
        assert self._store is not None
        try:
            await until_stored(self._store.health, self.flush, what="events")
        except StoreUnavailable as exc:  # the daemon gave up on the store (stopping): say what is lost
            log.error("events.not_stored", count=len(self._unsaved), error=exc.message)

    async def run_persister(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._store is None:
            return
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._flush_until_stored()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_until_stored()

    def close_all(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
