"""The event bus: monotonic ids, bounded replay rings, batched persistence, and fan-out to subscribers that may
fall behind without slowing anyone (see _bus.py)."""

from ._bus import RESTART_ID_GAP, RING_GLOBAL, RING_PER_SESSION, EventBus, Subscription

__all__ = ["RESTART_ID_GAP", "RING_GLOBAL", "RING_PER_SESSION", "EventBus", "Subscription"]
