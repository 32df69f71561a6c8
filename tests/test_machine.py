"""The pure session state machine (aegisd/core/machine.py): plain calls and a fake clock, no trio, no sleeps.
Prompt queue, turns, permission queue (one place for the pending request), interrupt, stall, prompt timeout,
idle timeout and the end of a session."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from aegisd.core import events as ev
from aegisd.core import wire as w
from aegisd.core.errors import NoPendingPermission, PermissionRequestMismatch
from aegisd.core.machine import (
    Answer,
    Append,
    CancelTurn,
    Count,
    Effect,
    EndSession,
    Flush,
    Publish,
    Save,
    SendPrompt,
    SessionMachine,
)
from aegisd.core.models import CrashInfo, LastError, SessionRecord
from aegisd.core.states import State

OPTIONS = [w.PermissionOption(optionId="allow", name="Allow", kind="allow_once"),
           w.PermissionOption(optionId="reject", name="Reject", kind="reject_once")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000_000

    def ms(self) -> int:
        return self.wall


def machine(clock: Clock, **rec: Any) -> SessionMachine:
    idle = rec.pop("idle", 0)
    record = SessionRecord(id="s1", workDir="/w", stallThresholdMs=rec.pop("stall_ms", 60_000), **rec)
    m = SessionMachine(record, now=clock.now, prompt_timeout_s=300, idle_timeout_s=idle, wall_ms=clock.ms)
    m.ready(clock.now)
    return m


def published(effects: list[Effect]) -> list[ev.SessionEvent]:
    return [e.event for e in effects if isinstance(e, Publish)]


def statuses(effects: list[Effect]) -> list[State]:
    return [e.status for e in published(effects) if isinstance(e, ev.StatusChanged)]


def ask(title: str = "Run", kind: str = "execute") -> w.RequestPermissionParams:
    return w.RequestPermissionParams(sessionId="acp-1", toolCall=w.ToolCallRef(toolCallId="t1", title=title,
                                                                                kind=kind), options=OPTIONS)


def running(clock: Clock, **rec: Any) -> SessionMachine:
    m = machine(clock, **rec)
    m.prompt("hi", clock.now)
    m.prompt_sent(clock.now)
    assert m.status == State.RUNNING
    return m


# ---- prompts and turns ---------------------------------------------------------------------------
def test_a_prompt_to_an_idle_session_is_sent_and_the_next_waits_in_the_queue() -> None:
    clock = Clock()
    m = machine(clock)
    res, out = m.prompt("one", clock.now)
    assert res["delivered"] and not res["queued"]
    assert [e for e in out if isinstance(e, SendPrompt)] == [SendPrompt("one")]
    assert any(isinstance(e, Append) and e.entries[0].role == "user" for e in out)
    assert m.rec.turns == 1 and m.status == State.IDLE  # running once the prompt is on the wire
    res, out = m.prompt("two", clock.now)
    assert res == {"ok": True, "delivered": False, "queued": True, "queuePosition": 1, "attempts": 0}
    assert not any(isinstance(e, SendPrompt) for e in out) and list(m.prompts) == ["two"] and m.busy
    assert statuses(m.prompt_sent(clock.now)) == [State.RUNNING]
    clock.now += 5
    out = m.turn_ended("end_turn", {"inputTokens": 3}, clock.now)
    turn = next(e for e in published(out) if isinstance(e, ev.Turn))
    assert turn == ev.Turn(stopReason="end_turn", usage={"inputTokens": 3}, turn=1)
    assert statuses(out) == [State.IDLE] and any(isinstance(e, Flush) for e in out)
    assert Count("turn_duration", 5000.0) in out
    assert out[-1] == SendPrompt("two") and not m.prompts and m.rec.turns == 2  # the queue moves on


def test_prompts_wait_for_the_agent_to_be_ready() -> None:
    clock = Clock()
    m = SessionMachine(SessionRecord(id="s1", workDir="/w"), now=clock.now, prompt_timeout_s=300, wall_ms=clock.ms)
    res, out = m.prompt("early", clock.now)
    assert res["queued"] and not any(isinstance(e, SendPrompt) for e in out)
    out = m.ready(clock.now)
    assert statuses(out) == [State.IDLE] and out[-1] == SendPrompt("early")


def test_a_prompt_is_stored_before_it_is_answered_and_before_it_is_sent() -> None:
    clock = Clock()
    m = machine(clock)
    res, out = m.prompt("one", clock.now)
    kinds = [type(e).__name__ for e in out if isinstance(e, (Save, Append, SendPrompt))]
    # saved queued and as being delivered (the answer waits for it), its user entry, then the wire
    assert kinds == ["Save", "Append", "SendPrompt"]
    user = next(e for e in out if isinstance(e, Append)).entries[-1]
    [head] = m.rec.promptQueue
    assert head.text == "one" and head.entryId == user.id and head.at == clock.wall
    _, out = m.prompt("two", clock.now)
    assert out == [Count("prompts"), Save()] and [q.text for q in m.rec.promptQueue] == ["one", "two"]
    m.prompt_sent(clock.now)
    out = m.turn_ended("end_turn", None, clock.now)
    # "one" is done with: out of the queue; "two" is marked and saved before its entry is appended
    assert [(q.text, q.entryId is not None) for q in m.rec.promptQueue] == [("two", True)]
    saves = [i for i, e in enumerate(out) if isinstance(e, Save)]
    entry = next(i for i, e in enumerate(out) if isinstance(e, Append) and e.entries[-1].role == "user")
    assert saves and saves[0] < entry < out.index(SendPrompt("two"))
    m.prompt_sent(clock.now)
    m.turn_ended("end_turn", None, clock.now)
    assert m.rec.promptQueue == []


def test_after_a_restart_queued_prompts_are_replayed_in_order_and_a_delivered_one_never_again() -> None:
    clock = Clock()
    m = machine(clock)
    m.prompt("one", clock.now)
    m.prompt_sent(clock.now)
    m.prompt("two", clock.now)
    m.prompt("three", clock.now)
    one = m.rec.promptQueue[0]
    assert one.entryId is not None
    # the daemon is killed: the record as saved goes to the next daemon, with the transcript the store holds
    saved = msgspec.json.decode(msgspec.json.encode(m.rec), type=SessionRecord)
    saved.transcriptCount = 0  # a stale count: the store decides
    m2 = SessionMachine(saved, now=clock.now, prompt_timeout_s=300, wall_ms=clock.ms)
    m2.recovered(stored_entries=one.entryId, last_entry_id=one.entryId)  # "one"'s user entry is stored
    assert m2.prompts == ["two", "three"] and saved.transcriptCount == one.entryId
    m2.resuming()
    out = m2.ready(clock.now)
    assert out[-1] == SendPrompt("two")  # not "one" again
    user = next(e for e in out if isinstance(e, Append)).entries[-1]
    assert user.id == one.entryId + 1 and user.text == "two"  # ids continue from the store
    m2.prompt_sent(clock.now)
    assert m2.turn_ended("end_turn", None, clock.now)[-1] == SendPrompt("three")


def test_a_prompt_whose_entry_never_reached_the_store_is_sent_after_a_restart() -> None:
    clock = Clock()
    m = machine(clock)
    m.prompt("one", clock.now)  # saved as being delivered; killed before its entry was appended
    saved = msgspec.json.decode(msgspec.json.encode(m.rec), type=SessionRecord)
    m2 = SessionMachine(saved, now=clock.now, prompt_timeout_s=300, wall_ms=clock.ms)
    m2.recovered(stored_entries=0, last_entry_id=0)
    assert m2.prompts == ["one"] and saved.promptQueue[0].entryId is None
    m2.resuming()
    out = m2.ready(clock.now)
    assert out[-1] == SendPrompt("one")
    assert next(e for e in out if isinstance(e, Append)).entries[-1].id == 1


def test_a_turn_that_waited_for_a_permission_decision_runs_again_after_a_restart() -> None:
    """Moved from a lost node: the tool it asked for never ran, so the turn runs again from its prompt (the agent
    asks again), before the prompts behind it; restarted in place, or merely running, it is not sent again (a
    decision or its work may have reached the agent)."""
    clock = Clock()
    m = running(clock)
    m.prompt("after", clock.now)
    m.request_permission(1, ask("Edit file"), clock.now)
    m.rec.pendingPermission, m.rec.status = m.head, m.status  # as the runner saves them (SetStatus)
    assert m.status == State.PERMISSION_PROMPT
    entry = m.rec.promptQueue[0].entryId
    saved = msgspec.json.decode(msgspec.json.encode(m.rec), type=SessionRecord)
    m2 = SessionMachine(saved, now=clock.now, prompt_timeout_s=300, wall_ms=clock.ms)
    m2.recovered(stored_entries=entry or 0, last_entry_id=entry or 0, why="node_lost: node n1")
    assert m2.prompts == ["hi", "after"] and saved.pendingPermission is None
    assert saved.lastError is not None and saved.lastError.kind == "interrupted"
    assert "node_lost: node n1" in saved.lastError.message and "Edit file" in saved.lastError.message
    m2.resuming()
    assert m2.ready(clock.now)[-1] == SendPrompt("hi")
    # merely running: not sent again
    r = running(clock)
    r.rec.status = r.status
    entry = r.rec.promptQueue[0].entryId
    saved = msgspec.json.decode(msgspec.json.encode(r.rec), type=SessionRecord)
    r2 = SessionMachine(saved, now=clock.now, prompt_timeout_s=300, wall_ms=clock.ms)
    r2.recovered(stored_entries=entry or 0, last_entry_id=entry or 0)
    assert r2.prompts == [] and saved.lastError is not None and "send the prompt again" in saved.lastError.message
    # restarted in place while asking: cancelled, said so, not sent again
    p = running(clock)
    p.request_permission(1, ask("Edit file"), clock.now)
    p.rec.pendingPermission, p.rec.status = p.head, p.status
    entry = p.rec.promptQueue[0].entryId
    saved = msgspec.json.decode(msgspec.json.encode(p.rec), type=SessionRecord)
    p2 = SessionMachine(saved, now=clock.now, prompt_timeout_s=300, wall_ms=clock.ms)
    p2.recovered(stored_entries=entry or 0, last_entry_id=entry or 0)
    assert p2.prompts == [] and saved.pendingPermission is None and saved.lastError is not None
    assert "(Edit file) was cancelled" in saved.lastError.message


def test_ids_continue_from_the_last_stored_entry_not_the_records_count() -> None:
    clock = Clock()
    m = SessionMachine(SessionRecord(id="s1", workDir="/w", transcriptCount=3), now=clock.now,
                       prompt_timeout_s=300, wall_ms=clock.ms)
    m.recovered(stored_entries=9, last_entry_id=9)
    assert m.rec.transcriptCount == 9 and m.builder.next_id == 10


def test_interrupt_and_the_end_drop_the_stored_queue() -> None:
    clock = Clock()
    m = running(clock)
    m.prompt("later", clock.now)
    _, out = m.interrupt(clock.now)
    assert Save() in out and [q.text for q in m.rec.promptQueue] == ["hi"]  # the turn's own stays until it ends
    m.prompt("again", clock.now)
    m.finish(State.KILLED, "killed", None)
    assert m.rec.promptQueue == []


def test_a_refused_prompt_keeps_the_error() -> None:
    clock = Clock()
    m = running(clock)
    error = LastError(kind="auth", message="log in first", at=1)
    out = m.turn_ended("end_turn", None, clock.now, error=error)
    turn = next(e for e in published(out) if isinstance(e, ev.Turn))
    assert turn.stopReason == "error" and turn.error == "log in first" and turn.errorKind == "auth"
    assert m.rec.lastError == error and m.rec.stopReason == "error"


# ---- permissions ---------------------------------------------------------------------------------
def test_permission_queue_is_the_one_place_of_the_pending_request() -> None:
    clock = Clock()
    m = running(clock)
    out = m.request_permission(1, ask("Run 1"), clock.now)
    assert statuses(out) == [State.PERMISSION_PROMPT] and not any(isinstance(e, Answer) for e in out)
    first = m.head
    assert first is not None and first.toolTitle == "Run 1"
    assert isinstance(published(out)[-1], ev.PermissionRequested)
    out = m.request_permission(2, ask("Run 2"), clock.now)
    assert Save() in out and statuses(out) == [] and m.head is first  # queued behind
    second = m.pending[1]
    assert second.requestId != first.requestId
    # naming the one behind decides nothing
    with pytest.raises(PermissionRequestMismatch) as exc:
        m.decide(True, clock.now, request_id=second.requestId)
    assert exc.value.details["queued"] is True and len(m.asks) == 2
    res, out = m.decide(True, clock.now, request_id=first.requestId, by="alice")
    assert res == {"ok": True, "optionId": "allow", "requestId": first.requestId}
    assert out[-1] == Answer(1, {"outcome": "selected", "optionId": "allow"})  # answered after settling
    decided = next(e for e in published(out) if isinstance(e, ev.PermissionDecided))
    assert decided == ev.PermissionDecided(auto=False, decision="allow", optionId="allow", requestId=first.requestId,
                                           by="alice")
    assert m.head is second and m.status == State.PERMISSION_PROMPT
    res, out = m.decide(False, clock.now)
    assert out[-1] == Answer(2, {"outcome": "selected", "optionId": "reject"})
    assert statuses(out) == [State.RUNNING] and m.head is None
    with pytest.raises(NoPendingPermission):
        m.decide(True, clock.now)


def test_the_mode_decides_without_asking() -> None:
    clock = Clock()
    m = running(clock, permissionMode="bypassPermissions")
    out = m.request_permission(7, ask(), clock.now)
    assert out[-1] == Answer(7, {"outcome": "selected", "optionId": "allow"})
    assert published(out)[-1] == ev.PermissionDecided(auto=True, decision="allow", optionId="allow", toolTitle="Run",
                                                      by="bypassPermissions")
    assert m.status == State.RUNNING and not m.asks and Count("auto_approvals") in out


def test_a_profile_rule_denies_even_in_bypass() -> None:
    clock = Clock()
    m = running(clock, permissionMode="bypassPermissions",
                permissionProfile={"rules": [{"tool": "execute", "behavior": "deny"}]})
    out = m.request_permission(7, ask(), clock.now)
    assert out[-1] == Answer(7, {"outcome": "selected", "optionId": "reject"})
    decided = published(out)[-1]
    assert isinstance(decided, ev.PermissionDecided) and decided.by == "permission profile"


def test_the_end_of_the_turn_cancels_what_waits() -> None:
    clock = Clock()
    m = running(clock)
    m.request_permission(1, ask(), clock.now)
    out = m.turn_ended("end_turn", None, clock.now)
    assert Answer(1, {"outcome": "cancelled"}) in out and statuses(out) == [State.IDLE]
    assert m.head is None and not m.asks


# ---- interrupt -----------------------------------------------------------------------------------
def test_interrupt_cancels_the_turn_its_requests_and_the_queue() -> None:
    clock = Clock()
    m = running(clock)
    m.prompt("later", clock.now)
    m.request_permission(1, ask(), clock.now)
    res, out = m.interrupt(clock.now)
    assert res == {"ok": True, "interrupted": True}
    assert out[0] == CancelTurn(strict=True) and Answer(1, {"outcome": "cancelled"}) in out
    assert statuses(out) == [State.RUNNING] and not m.prompts  # the turn ends when the agent says so
    out = m.turn_ended("cancelled", None, clock.now)
    assert m.rec.stopReason == "cancelled" and statuses(out) == [State.IDLE]
    assert not any(isinstance(e, SendPrompt) for e in out)
    assert m.interrupt(clock.now) == ({"ok": True, "interrupted": False}, [])


def test_interrupt_before_the_prompt_is_on_the_wire_cancels_it_once_it_is() -> None:
    clock = Clock()
    m = machine(clock)
    m.prompt("hi", clock.now)
    res, out = m.interrupt(clock.now)
    assert res["interrupted"] and not any(isinstance(e, CancelTurn) for e in out)
    assert m.prompt_sent(clock.now)[0] == CancelTurn()


# ---- the clock -----------------------------------------------------------------------------------
def test_no_activity_stalls_and_activity_resumes() -> None:
    clock = Clock()
    m = running(clock, stall_ms=60_000)
    assert m.deadline(clock.now) == clock.now + 30  # at least every 30 s
    clock.now += 59
    assert m.tick(clock.now) == []
    clock.now += 1
    out = m.tick(clock.now)
    assert statuses(out) == [State.STALLED]
    stall = published(out)[-1]
    assert isinstance(stall, ev.Stall) and stall.detail == "no agent activity for 60 s (threshold 60 s)"
    assert m.tick(clock.now) == []  # once
    clock.now += 1
    out = m.update(w.AgentMessageChunk(content={"type": "text", "text": "back"}), clock.now)
    assert statuses(out) == [State.RUNNING]
    assert ev.Chunk(role="assistant", contentType="text", text="back") in published(out)


def test_prompt_timeout_cancels_then_crashes_after_the_grace() -> None:
    clock = Clock()
    m = running(clock, stall_ms=1_000_000)
    assert m.deadline(clock.now) == clock.now + 30
    clock.now += 299
    m.activity(clock.now)  # any line from the agent counts as activity
    clock.now += 299
    assert m.tick(clock.now) == []
    assert m.deadline(clock.now) == clock.now + 1
    clock.now += 1
    out = m.tick(clock.now)
    assert CancelTurn() in out and any(isinstance(e, Append) and "timed out" in e.entries[0].text for e in out)
    assert m.deadline(clock.now) == clock.now + 10
    clock.now += 9
    assert m.tick(clock.now) == []
    clock.now += 1
    end = m.tick(clock.now)
    assert len(end) == 1 and isinstance(end[0], EndSession) and end[0].status == State.CRASHED
    assert end[0].reason == "acp_request_timeout"


def test_a_turn_the_timeout_cancelled_ends_as_timeout() -> None:
    clock = Clock()
    m = running(clock, stall_ms=1_000_000)
    clock.now += 300
    m.tick(clock.now)
    out = m.turn_ended("cancelled", None, clock.now)
    assert m.rec.stopReason == "timeout" and statuses(out) == [State.IDLE]


def test_an_idle_session_closes_after_the_idle_timeout() -> None:
    clock = Clock()
    m = machine(clock, idle=600)
    assert m.deadline(clock.now) == clock.now + 30
    clock.now += 599.5
    assert m.deadline(clock.now) == clock.now + 0.5 and m.tick(clock.now) == []
    clock.now += 0.5
    assert m.tick(clock.now) == [EndSession(State.COMPLETED, "idle_timeout")]


def test_waiting_for_permission_neither_stalls_nor_times_out() -> None:
    clock = Clock()
    m = running(clock, stall_ms=60_000)
    m.request_permission(1, ask(), clock.now)
    clock.now += 10_000
    assert m.tick(clock.now) == []


# ---- the end -------------------------------------------------------------------------------------
def test_a_crash_ends_with_its_reason_and_exit_code() -> None:
    clock = Clock()
    m = running(clock)
    m.request_permission(1, ask(), clock.now)
    out = m.end_requested()
    assert out == [Answer(1, {"outcome": "cancelled"})] and m.head is None
    assert m.prompt("too late", clock.now)[1] == [Count("prompts"), Save()]  # stored, but no turn once ending
    crash = CrashInfo(reason="agent_exited: the agent exited with code 3 while running", exitCode=3)
    out = m.finish(State.CRASHED, "agent_exited", crash)
    assert statuses(out) == [State.CRASHED] and Count("crashes") in out
    ended = published(out)[-1]
    assert ended == ev.Ended(reason=crash.reason, status=State.CRASHED, exitCode=3)
    assert m.rec.crash is crash and m.rec.endReason == "agent_exited" and m.rec.endedAt == clock.wall


def test_daemon_shutdown_keeps_the_state_for_the_next_daemon() -> None:
    clock = Clock()
    m = running(clock)
    m.request_permission(1, ask(), clock.now)
    out = m.finish(None, "daemon_shutdown", None)
    assert out == [Answer(1, {"outcome": "cancelled"}), Save()]
    assert m.status == State.PERMISSION_PROMPT and m.head is None and m.rec.endedAt is None
