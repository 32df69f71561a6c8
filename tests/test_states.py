from __future__ import annotations

import pytest

from aegisd.core.errors import IllegalTransition
from aegisd.core.states import ACTIVE, LIVE, TERMINAL, TRANSITIONS, State, check_transition


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


def test_terminal_states_are_final() -> None:
    for s in TERMINAL:
        assert TRANSITIONS[s] == frozenset()
        for t in State:
            with pytest.raises(IllegalTransition):
                check_transition(s, t)


def test_live_states_can_always_end() -> None:
    for s in LIVE:
        assert TERMINAL <= TRANSITIONS[s]


@pytest.mark.parametrize("old,new", [
    (State.PENDING, State.RUNNING), (State.PENDING, State.PERMISSION_PROMPT), (State.IDLE, State.STALLED),
    (State.PENDING, State.STALLED),
])
def test_illegal(old: State, new: State) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_groups() -> None:
    assert ACTIVE == {State.RUNNING, State.PERMISSION_PROMPT, State.STALLED}
    assert State.PERMISSION_PROMPT not in {State.IDLE}
    assert str(State.IDLE) == "idle"
