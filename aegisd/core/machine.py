"""The session state machine, pure: no trio, no I/O, no clock of its own.

A :class:`SessionMachine` is fed what happens to one session — the agent became ready, its updates, its
permission requests, the end of a prompt turn, commands (prompt, approve/reject, interrupt) and clock ticks
(``now``: monotonic seconds, passed in) — and answers each with a list of *effects* for its runner
(aegisd/sessions/runner.py) to carry out in order: append to the transcript, publish an event, save the record,
send a prompt, cancel the turn, answer a permission request, end the session, count a metric.

What it keeps is the session's working state, each thing in one place:
- the prompt queue, on the record (``rec.promptQueue``, persisted: acknowledged means stored): the prompts
  waiting for their turn (oldest first), sent one turn at a time while the session is idle, and first the one
  being delivered (``entryId`` set). A prompt is saved in the queue before its send is answered; before it is
  sent to the agent, the record saying it is being delivered (``entryId``: its user entry) is saved, then the
  user entry appended; at the end of its turn it leaves the queue. After a restart, :meth:`recovered` keeps the
  waiting ones for replay and drops the one whose user entry reached the store (it may have reached the agent:
  it is never sent twice);
- ``turn``: the prompt turn in flight (None between turns);
- ``asks``: the permission requests waiting for a decision, oldest (the one approve/reject decides) first; the
  the record's ``pendingPermission`` is written from it (``head``) whenever the runner saves the record, never
  kept apart;
- ``last_activity``: when the agent last said anything, for stall detection, the prompt timeout and the idle
  timeout (:meth:`tick`; :meth:`deadline` says when the next tick is due).

The record (``rec``) is the persisted view: the machine updates its activity stamps, turns, stop reason and
pending permission, and has the runner show each status transition (checked against the one table of
transitions in states.py) with ``SetStatus``, in order with the effects before it."""

from __future__ import annotations

import collections
import itertools
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from aegisd.core import events as ev
from aegisd.core import wire as w
from aegisd.core.errors import AegisError, NoPendingPermission, PermissionRequestMismatch
from aegisd.core.models import (
    ContextUsage,
    CrashInfo,
    LastError,
    PendingPermission,
    PermissionOption,
    QueuedPrompt,
    SessionRecord,
    TranscriptEntry,
    now_ms,
)
from aegisd.core.permissions import PermissionProfile, Policy, choose_option, daemon_policy, evaluate_profile
from aegisd.core.states import TERMINAL, State, check_transition
from aegisd.core.transcript import TranscriptBuilder

CANCEL_GRACE_S = 10.0  # after a prompt timeout's session/cancel, how long the agent has to end the turn
WAKE_AT_LEAST_S = 30.0  # the longest a runner waits between ticks


# ---- effects -----------------------------------------------------------------------------------------
class Effect(msgspec.Struct):
    """Something the runner does for the machine."""


class Append(Effect):
    """Append entries to the transcript (and publish each as a ``message`` event)."""

    entries: list[TranscriptEntry]


class Publish(Effect):
    event: ev.SessionEvent


class SetStatus(Effect):
    """Show the session's new status on the record (a transition the machine checked); the record is saved and
    the change published next, so whoever reads the record sees it in the order of the events."""

    status: State


class Save(Effect):
    """Persist the record."""


class Flush(Effect):
    """Make what was written durable now (the end of a turn)."""


class SendPrompt(Effect):
    """Send ``session/prompt`` with this text; then tell the machine :meth:`SessionMachine.prompt_sent`, and when
    the answer comes :meth:`SessionMachine.turn_ended`."""

    text: str


class CancelTurn(Effect):
    """Send ``session/cancel``. ``strict``: a failure (the agent is gone) is the caller's error."""

    strict: bool = False


class Answer(Effect):
    """Answer the agent's permission request ``key`` with ``outcome``."""

    key: int
    outcome: dict[str, Any]


class RecordUsage(Effect):
    """Add a turn's token usage to the session and the metering ledger."""

    usage: dict[str, Any]


class EndSession(Effect):
    """Stop the agent and end the session with this status."""

    status: State
    reason: str
    crash: CrashInfo | None = None


class Count(Effect):
    """Add one to a daemon metric (a counter of aegisd/core/metrics.py), or observe ``value`` in a histogram."""

    metric: str
    value: float | None = None


class Log(Effect):
    event: str
    fields: dict[str, Any] = {}


# ---- working state -----------------------------------------------------------------------------------
class Turn(msgspec.Struct):
    """The prompt turn in flight."""

    text: str
    started: float
    prompt_id: str = ""  # its QueuedPrompt's id
    sent: bool = False  # session/prompt is on the wire
    cancel_early: bool = False  # an interrupt came before it was
    timeout_at: float | None = None  # when the prompt timeout cancelled it


class Ask(msgspec.Struct):
    """A permission request waiting for a decision. ``key`` is the runner's handle on the agent's request."""

    key: int
    info: PendingPermission
    options: list[w.PermissionOption]


class SessionMachine:
    def __init__(self, rec: SessionRecord, *, now: float, prompt_timeout_s: float, idle_timeout_s: float = 0.0,
                 cancel_grace_s: float | None = None, wall_ms: Callable[[], int] = now_ms) -> None:
        self.rec = rec
        self.prompt_timeout_s = prompt_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.cancel_grace_s = CANCEL_GRACE_S if cancel_grace_s is None else cancel_grace_s
        self.wall_ms = wall_ms
        self.builder = TranscriptBuilder(next_id=rec.transcriptCount + 1, clock=wall_ms)
        self.status = rec.status  # the record shows it once the runner carries out SetStatus
        self.turn: Turn | None = None
        self.asks: collections.deque[Ask] = collections.deque()
        self.last_activity = now
        self.native_mode = False  # the agent applies the permission mode itself
        self.started = False  # the agent is ready (idle once)
        self.ending = False  # the session is ending: no new turn, no settling
        self.delivered_prompts = 0
        self._request_numbers = itertools.count(1)  # permission request ids are never reused within a session

    # ---- views ---------------------------------------------------------------------------------
    @property
    def waiting(self) -> list[QueuedPrompt]:
        """The queued prompts waiting for their turn, oldest first (not the one being delivered)."""
        return [q for q in self.rec.promptQueue if q.entryId is None]

    @property
    def prompts(self) -> list[str]:
        """The texts of the prompts waiting for their turn, oldest first."""
        return [q.text for q in self.waiting]

    @property
    def busy(self) -> bool:
        """A turn is in flight or queued."""
        return self.turn is not None or bool(self.waiting)

    @property
    def pending(self) -> list[PendingPermission]:
        return [a.info for a in self.asks]

    @property
    def head(self) -> PendingPermission | None:
        """The pending request: the one approve/reject decides (the record's ``pendingPermission``)."""
        return self.asks[0].info if self.asks else None

    def stall_after_s(self) -> float:
        return self.rec.stallThresholdMs / 1000

    # ---- helpers -------------------------------------------------------------------------------
    def _touch(self, now: float) -> None:
        self.last_activity = now
        self.rec.lastActivity = self.wall_ms()

    def _save(self) -> list[Effect]:
        return [Save()]

    def _set_state(self, new: State, detail: str | None = None) -> list[Effect]:
        old = self.status
        if old == new:
            return []
        check_transition(old, new)
        self.status = new
        return [SetStatus(new), *self._save(),
                Publish(ev.StatusChanged(status=new, previous=old, detail=detail or None))]

    def _append(self, entries: list[TranscriptEntry]) -> list[Effect]:
        return [Append(entries)] if entries else []

    def _next_turn(self, now: float) -> list[Effect]:
        waiting = self.waiting
        if not (waiting and self.turn is None and self.status == State.IDLE and self.started and not self.ending):
            return []
        head = waiting[0]
        entries = self.builder.user_prompt(head.text)
        # saved as being delivered before its user entry is appended and before it is sent: after a crash the
        # store tells whether it may have reached the agent (its entry is there) or not (replayed)
        head.entryId = entries[-1].id
        self.turn = Turn(text=head.text, started=now, prompt_id=head.id)
        self.delivered_prompts += 1
        self.rec.turns += 1
        self._touch(now)
        return [Save(), *self._append(entries), SendPrompt(head.text)]

    def _done_with(self, prompt_id: str) -> None:
        self.rec.promptQueue = [q for q in self.rec.promptQueue if q.id != prompt_id]

    def _cancel_asks(self, now: float | None = None) -> list[Effect]:
        """Answer every waiting request "cancelled"; with ``now``, leave permission_prompt (the session goes
        back to what it was doing)."""
        out: list[Effect] = [Answer(a.key, {"outcome": "cancelled"}) for a in self.asks]
        self.asks.clear()
        if now is not None:
            out += self._settle_permission(now)
        return out

    def _settle_permission(self, now: float) -> list[Effect]:
        """After a decision: the next request is pending, or the session goes back to what it was doing."""
        if not self.asks and self.status == State.PERMISSION_PROMPT and not self.ending:
            self._touch(now)
            return self._set_state(State.RUNNING if self.turn is not None else State.IDLE)
        return []

    # ---- the agent -----------------------------------------------------------------------------
    def recovered(self, *, stored_entries: int, last_entry_id: int, why: str = "daemon_restart") -> None:
        """A new daemon takes the session over (after a stop or a crash): the store holds ``stored_entries``
        transcript entries, the last with id ``last_entry_id``. The next entry id continues from what is stored
        (never from the record's count, which may be older), and the prompt queue is settled: one whose user
        entry is stored was being delivered (it may have reached the agent: it is not sent again); one whose
        entry is not waits again, in its place, with the others."""
        rec = self.rec
        rec.transcriptCount = stored_entries
        self.builder = TranscriptBuilder(next_id=max(stored_entries, last_entry_id) + 1, clock=self.wall_ms)
        # moved from a lost node (aegisd/cluster), a turn that waited for a permission decision had not run the tool
        # it asked for: it runs again from its prompt, so the agent asks again and the request survives the move.
        # A daemon restarted in place does not send a prompt twice (a decision acknowledged just before a kill -9
        # may already have reached the agent): the request is cancelled and the session says so.
        pending = rec.pendingPermission if rec.status == State.PERMISSION_PROMPT else None
        asked = pending if why.startswith("node_lost") else None
        queue: list[QueuedPrompt] = []
        for q in rec.promptQueue:
            if q.entryId is not None:
                if q.entryId <= last_entry_id and asked is None:
                    continue  # delivered (or maybe): its entry is in the transcript
                q.entryId = None
            queue.append(q)
        rec.promptQueue = queue
        if rec.status in (State.RUNNING, State.STALLED, State.PERMISSION_PROMPT):
            # the turn in flight ended with the agent that ran it
            if asked is not None:
                how = (f" while it waited for a permission decision ({asked.toolTitle or asked.requestId}): it runs "
                       "again from its prompt, so the agent asks again")
            elif pending is not None:
                how = (f"; its permission request ({pending.toolTitle or pending.requestId}) was cancelled: send the "
                       "prompt again to redo the turn")
            else:
                how = "; send the prompt again to redo it"
            rec.lastError = LastError(kind="interrupted", at=self.wall_ms(), message=(
                f"the turn in flight was interrupted ({why}: the agent was started again and its session loaded)"
                f"{how}"))
            rec.pendingPermission = None

    def resuming(self) -> list[Effect]:
        """A new daemon starts the agent again for a session the last one left live."""
        return self._set_state(State.PENDING, "daemon_restart")

    def ready(self, now: float) -> list[Effect]:
        """The agent started (or was resumed) and can take prompts."""
        self.started = True
        self._touch(now)
        return [*self._set_state(State.IDLE), *self._next_turn(now)]

    def activity(self, now: float) -> None:
        """The agent said something (any line): it is alive."""
        self.last_activity = now

    def update(self, update: w.SessionUpdate | w.UnknownUpdate, now: float, *, replay: bool = False) -> list[Effect]:
        """A `session/update` of this session. ``replay``: part of a session/load (already in the transcript)."""
        rec = self.rec
        self._touch(now)
        if isinstance(update, w.AvailableCommandsUpdate):
            rec.availableCommands = update.availableCommands
        elif isinstance(update, w.CurrentModeUpdate):
            rec.currentMode = update.currentModeId
        elif isinstance(update, w.SessionInfoUpdate):
            if update.title:
                rec.title = update.title
        elif isinstance(update, w.UsageUpdate):
            rec.contextUsage = ContextUsage(used=update.used, size=update.size, cost=update.cost)
        if replay:
            return []
        out: list[Effect] = []
        if self.status == State.STALLED:
            out += self._set_state(State.RUNNING, "activity")
        if isinstance(update, (w.AgentMessageChunk, w.AgentThoughtChunk)):
            text = w.content_text(update.content)
            if text:
                out.append(Publish(ev.Chunk(
                    role="assistant", contentType="text" if isinstance(update, w.AgentMessageChunk) else "thinking",
                    text=text)))
        elif isinstance(update, w.ToolCall):
            out.append(Publish(ev.Tool(toolUseId=update.toolCallId, title=update.title, kind=update.kind,
                                       status=update.status or "pending")))
        elif isinstance(update, w.ToolCallUpdate) and (update.status or update.title):
            out.append(Publish(ev.Tool(toolUseId=update.toolCallId, title=update.title, kind=update.kind,
                                       status=update.status)))
        return out + self._append(self.builder.update(update))

    # ---- prompts and turns ---------------------------------------------------------------------
    def prompt(self, text: str, now: float, *, prompt_id: str | None = None) -> tuple[dict[str, Any], list[Effect]]:
        """Queue a prompt; it is sent at once when the session is idle. The effects save the record with the
        prompt queued first: the runner answers once they are carried out, so an answered prompt is stored."""
        self.rec.promptQueue.append(QueuedPrompt(id=prompt_id or uuid.uuid4().hex, text=text, at=self.wall_ms()))
        idle_now = self.status == State.IDLE and self.turn is None and self.started and not self.ending
        turn = self._next_turn(now)  # when it starts at once, its first Save stores the prompt too
        out: list[Effect] = [Count("prompts"), *(turn if turn else [Save()])]
        if idle_now:
            return {"ok": True, "delivered": True, "queued": False, "attempts": 1}, out
        return {"ok": True, "delivered": False, "queued": True, "queuePosition": len(self.waiting),
                "attempts": 0}, out

    def prompt_sent(self, now: float) -> list[Effect]:
        """session/prompt is on the wire."""
        turn = self.turn
        if turn is None:
            return []
        turn.sent = True
        out: list[Effect] = [CancelTurn()] if turn.cancel_early else []
        return out + self._set_state(State.RUNNING)

    def turn_ended(self, stop: str, usage: dict[str, Any] | None, now: float, *,
                   error: LastError | None = None) -> list[Effect]:
        """The answer to session/prompt: its stop reason and usage, or (``error``) the agent refused it."""
        rec, turn = self.rec, self.turn
        out: list[Effect] = []
        if error is not None:
            stop = "error"
            rec.lastError = error
            out += self._append(self.builder.system(error.message, "error"))
        if turn is not None and turn.timeout_at is not None and stop == "cancelled":
            stop = "timeout"
        self.turn = None
        if turn is not None:
            self._done_with(turn.prompt_id)
        out += [Count("turns"), Count("turn_duration", ((now - turn.started) if turn else 0.0) * 1000)]
        out += self._cancel_asks()
        rec.stopReason = stop
        if stop != "error":
            rec.lastError = None
        if usage:
            out.append(RecordUsage(usage))
        out += self._append(self.builder.turn_end(stop, usage))
        done = ev.Turn(stopReason=stop, usage=usage, turn=rec.turns)
        if stop == "error" and rec.lastError is not None:
            done.error, done.errorKind = rec.lastError.message, rec.lastError.kind
        out.append(Publish(done))
        if self.status in (State.RUNNING, State.STALLED, State.PERMISSION_PROMPT):
            out += self._set_state(State.IDLE, stop)
        if not any(isinstance(e, Save) for e in out):
            out.append(Save())  # the prompt is done with: out of the stored queue
        out.append(Flush())
        return out + self._next_turn(now)

    def interrupt(self, now: float) -> tuple[dict[str, Any], list[Effect]]:
        """Drop the queued prompts and cancel the turn (and the requests it waits on)."""
        dropped = bool(self.waiting)
        self.rec.promptQueue = [q for q in self.rec.promptQueue if q.entryId is not None]
        turn = self.turn
        saved: list[Effect] = [Save()] if dropped else []  # the drop is stored before it is answered
        if turn is None:
            return {"ok": True, "interrupted": False}, saved
        out: list[Effect] = []
        if turn.sent:
            out.append(CancelTurn(strict=True))
        else:
            turn.cancel_early = True
        out += self._cancel_asks(now)
        return {"ok": True, "interrupted": True}, out + saved

    # ---- permissions ---------------------------------------------------------------------------
    def request_permission(self, key: int, params: w.RequestPermissionParams, now: float) -> list[Effect]:
        """The agent asks permission (request ``key``): decided at once by the session's permission profile or
        mode, else queued for a person (the answer comes with :meth:`decide`, or "cancelled")."""
        rec = self.rec
        self._touch(now)
        out = self._append(self.builder.permission_request(params))
        tc = params.toolCall
        policy = daemon_policy(rec.permissionMode, tc.kind, native=self.native_mode)
        by = rec.permissionMode
        if rec.permissionProfile:  # explicit per-session rules come first (a deny rule wins even in bypass)
            profile = msgspec.convert(rec.permissionProfile, PermissionProfile)
            ruled = evaluate_profile(profile, kind=tc.kind, title=tc.title, name=tc.name, raw_input=tc.rawInput)
            if ruled is not None:
                policy, by = ruled, "permission profile"
        if policy is not Policy.ASK:
            try:
                option = choose_option(params.options, allow=policy is Policy.ALLOW)
            except AegisError:
                policy = Policy.ASK
            else:
                verb = "auto-approved" if policy is Policy.ALLOW else "auto-rejected"
                out.append(Count("auto_approvals" if policy is Policy.ALLOW else "auto_rejections"))
                out += self._append(self.builder.permission_decision(f"{verb} ({by}): {option}", tc.toolCallId or None))
                out.append(Publish(ev.PermissionDecided(auto=True, decision=policy.value, optionId=option,
                                                        toolTitle=tc.title or "", by=by)))
                return [*out, Answer(key, {"outcome": "selected", "optionId": option})]
        title = tc.title or tc.name or "tool"
        wall = self.wall_ms()
        info = PendingPermission(
            requestId=f"perm-{wall}-{next(self._request_numbers)}", toolTitle=title, toolKind=tc.kind,
            toolCallId=tc.toolCallId or None, rawInput=tc.rawInput,
            options=[PermissionOption(optionId=o.optionId, name=o.name, kind=o.kind) for o in params.options],
            since=wall, toolName=title, prompt=title, startedAt=wall)
        self.asks.append(Ask(key=key, info=info, options=params.options))
        if self.status != State.PERMISSION_PROMPT:
            out += self._set_state(State.PERMISSION_PROMPT, title)
        else:
            out += self._save()
        return [*out, Publish(ev.PermissionRequested(request=info))]

    def decide(self, allow: bool, now: float, *, option_id: str | None = None, request_id: str | None = None,
               by: str | None = None) -> tuple[dict[str, Any], list[Effect]]:
        """Approve or reject the pending request (``request_id``: only if it is that one)."""
        head = self.asks[0].info if self.asks else None
        if request_id is not None and (head is None or head.requestId != request_id):
            # the caller's user saw another request than the one pending: decide nothing
            queued = any(a.info.requestId == request_id for a in self.asks)
            what = f"permission request {request_id} of session {self.rec.id}"
            if head is None:
                message = f"{what} is not pending: nothing is pending"
            elif queued:
                message = f"{what} waits behind {head.requestId} ({head.toolTitle}): decide that one first"
            else:
                message = f"{what} is not pending: the pending one is {head.requestId} ({head.toolTitle})"
            raise PermissionRequestMismatch(
                message, details={"requestId": request_id, "pendingRequestId": head.requestId if head else None,
                                  "queued": queued})
        if not self.asks:
            raise NoPendingPermission(f"session {self.rec.id} has no pending permission request")
        ask = self.asks[0]
        option = choose_option(ask.options, allow=allow, option_id=option_id)
        out: list[Effect] = [Count("approvals" if allow else "rejections"),
                             Count("permission_latency", max(0, self.wall_ms() - ask.info.since))]
        out += self._append(self.builder.permission_decision(
            f"{'approved' if allow else 'rejected'}: {option}", ask.info.toolCallId))
        out.append(Publish(ev.PermissionDecided(auto=False, decision="allow" if allow else "deny", optionId=option,
                                                requestId=ask.info.requestId, by=by)))
        # settle the session before answering the agent: whoever asks next sees the decision taken
        self.asks.popleft()
        out += self._settle_permission(now)
        out.append(Answer(ask.key, {"outcome": "selected", "optionId": option}))
        return {"ok": True, "optionId": option, "requestId": ask.info.requestId}, out

    # ---- the clock -----------------------------------------------------------------------------
    def tick(self, now: float) -> list[Effect]:
        """Stall detection, the prompt timeout and the idle timeout, as of ``now``."""
        if self.ending:
            return []
        turn = self.turn
        idle_for = now - self.last_activity
        stall_after = self.stall_after_s()
        if self.idle_timeout_s > 0 and self.status == State.IDLE and not self.busy and idle_for >= self.idle_timeout_s:
            return [EndSession(State.COMPLETED, "idle_timeout")]  # its agent holds hundreds of MiB: give them back
        out: list[Effect] = []
        if turn is not None and self.status == State.RUNNING and idle_for >= stall_after:
            out += self._set_state(State.STALLED, "no agent activity")
            out.append(Publish(ev.Stall(
                stallType="no_activity",
                detail=f"no agent activity for {int(idle_for)} s (threshold {int(stall_after)} s)")))
        if turn is not None and self.status in (State.RUNNING, State.STALLED):
            if turn.timeout_at is None:
                if idle_for >= self.prompt_timeout_s:
                    turn.timeout_at = now
                    out.append(Log("session.prompt_timeout", {"idle_s": round(idle_for, 1)}))
                    out += self._append(self.builder.system(
                        f"prompt timed out after {int(idle_for)} s without agent activity; cancelling", "error"))
                    out.append(CancelTurn())
            elif now - turn.timeout_at >= self.cancel_grace_s:
                out.append(EndSession(State.CRASHED, "acp_request_timeout", CrashInfo(
                    reason="acp_request_timeout: the agent neither finished nor honoured session/cancel "
                           f"after the prompt timeout ({self.prompt_timeout_s:g} s)")))
        return out

    def deadline(self, now: float) -> float:
        """When :meth:`tick` may have something to do next (a state change may bring it closer)."""
        turn = self.turn
        wake = now + min(self.stall_after_s(), self.prompt_timeout_s, WAKE_AT_LEAST_S)
        if self.idle_timeout_s > 0 and self.status == State.IDLE and not self.busy:
            wake = min(wake, self.last_activity + self.idle_timeout_s)
        if turn is not None and self.status == State.RUNNING:
            wake = min(wake, self.last_activity + self.stall_after_s())
        if turn is not None and self.status in (State.RUNNING, State.STALLED):
            if turn.timeout_at is None:
                wake = min(wake, self.last_activity + self.prompt_timeout_s)
            else:
                wake = min(wake, turn.timeout_at + self.cancel_grace_s)
        return wake

    # ---- the end -------------------------------------------------------------------------------
    def end_requested(self) -> list[Effect]:
        """The session is ending (killed, closed, crashed, or the daemon stops): no new turn, and the agent's
        waiting requests are answered "cancelled"."""
        self.ending = True
        return self._cancel_asks()

    def finish(self, status: State | None, reason: str, crash: CrashInfo | None) -> list[Effect]:
        """The agent is stopped: settle the final state. ``status=None``: the daemon stops, and the session keeps
        its state for the next daemon to resume."""
        rec = self.rec
        out = self.end_requested()
        if status is None:
            self.builder.flush()
            return [*out, *self._save()]
        out += self._append(self.builder.flush())
        rec.promptQueue = []  # the session is over: what waited is dropped with it
        rec.crash = crash
        rec.endReason = reason
        if status == State.CRASHED:
            out.append(Count("crashes"))
        rec.endedAt = self.wall_ms()
        if self.status not in TERMINAL:
            check_transition(self.status, status)
            previous, self.status = self.status, status
            out += [SetStatus(status), Save(),
                    Publish(ev.StatusChanged(status=status, previous=previous, detail=reason or None))]
        ended = ev.Ended(reason=reason, status=self.status)
        if crash is not None:  # the crash's reason says more than the short one
            ended.reason, ended.exitCode, ended.signal = crash.reason, crash.exitCode, crash.signal
        out.append(Publish(ended))
        return out


__all__ = [
    "CANCEL_GRACE_S", "Answer", "Append", "Ask", "CancelTurn", "Count", "Effect", "EndSession", "Flush", "Log",
    "Publish", "QueuedPrompt", "RecordUsage", "Save", "SendPrompt", "SessionMachine", "SetStatus", "Turn",
]
