"""Session states: one enum, named groups, one table of allowed transitions.

    pending -> idle <-> running <-> permission_prompt
                        running <-> stalled
    any live state -> completed | killed | crashed   (terminal)
    live states -> pending                            (resume after a daemon restart)
"""

from __future__ import annotations

import enum

from aegisd.core.errors import IllegalTransition


class State(str, enum.Enum):
    PENDING = "pending"
    IDLE = "idle"
    RUNNING = "running"
    PERMISSION_PROMPT = "permission_prompt"
    STALLED = "stalled"
    COMPLETED = "completed"
    KILLED = "killed"
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value


TERMINAL: frozenset[State] = frozenset({State.COMPLETED, State.KILLED, State.CRASHED})
LIVE: frozenset[State] = frozenset(set(State) - TERMINAL)
#: a prompt turn is in flight
ACTIVE: frozenset[State] = frozenset({State.RUNNING, State.PERMISSION_PROMPT, State.STALLED})
#: a person (or a client acting for one) must decide something
NEEDS_HUMAN: frozenset[State] = frozenset({State.PERMISSION_PROMPT})

_ENDINGS = TERMINAL
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.IDLE}) | _ENDINGS,
    # IDLE -> PERMISSION_PROMPT: an agent may ask outside a prompt turn (e.g. background work)
    State.IDLE: frozenset({State.RUNNING, State.PERMISSION_PROMPT, State.PENDING}) | _ENDINGS,
    State.RUNNING: frozenset({State.IDLE, State.PERMISSION_PROMPT, State.STALLED, State.PENDING}) | _ENDINGS,
    State.PERMISSION_PROMPT: frozenset({State.RUNNING, State.IDLE, State.PENDING}) | _ENDINGS,
    State.STALLED: frozenset({State.RUNNING, State.PERMISSION_PROMPT, State.IDLE, State.PENDING}) | _ENDINGS,
    State.COMPLETED: frozenset(),
    State.KILLED: frozenset(),
    State.CRASHED: frozenset(),
}


def can_transition(old: State, new: State) -> bool:
    return new in TRANSITIONS[old]


def check_transition(old: State, new: State) -> State:
    """Return ``new`` if ``old -> new`` is allowed, else raise :class:`IllegalTransition`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"illegal session transition {old.value} -> {new.value}")
    return new


# Statuses accepted by `GET /v1/sessions?status=`: every state plus the groups clients filter by.
STATUS_FILTERS: dict[str, frozenset[State]] = {s.value: frozenset({s}) for s in State}
STATUS_FILTERS.update({"active": LIVE, "live": LIVE, "ended": TERMINAL, "terminal": TERMINAL,
                       "busy": ACTIVE, "all": frozenset(State)})
