"""Typed events (aegisd/core/events.py): one struct and one name per kind, the envelope the bus keeps, the
store round trip, events persisted under the old `approval` name, and the SSE wire form of each permission kind
(the original's `approval` payloads, exactly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from aegisd.bus import EventBus
from aegisd.core import events as ev
from aegisd.core.models import Event, PendingPermission, PermissionOption, TranscriptEntry
from aegisd.core.states import State
from aegisd.surfaces.http._sse import frame


def _sse(e: Event, scope: str = "session") -> dict:
    raw = frame(e, scope=scope).decode()
    return json.loads(raw.split("data: ", 1)[1])  # type: ignore[no-any-return]


def _request() -> PendingPermission:
    return PendingPermission(requestId="perm-1", toolTitle="Run", toolKind="execute", rawInput={"cmd": "ls"},
                             options=[PermissionOption(optionId="allow", name="Allow", kind="allow_once")],
                             since=5, toolName="Run", prompt="Run", startedAt=5)


def test_kinds_have_distinct_names() -> None:
    names = [k.NAME for k in ev.KINDS.values()]
    assert len(names) == len(set(names)) and "" not in names
    assert ev.PermissionRequested.NAME != ev.PermissionDecided.NAME


def test_bus_carries_the_typed_event() -> None:
    bus = EventBus()
    decided = ev.PermissionDecided(auto=True, decision="allow", optionId="allow", toolTitle="Read", by="acceptEdits")
    e = bus.publish("s1", decided)
    assert e.event == "permission.decided" and ev.payload(e) is decided
    assert e.data == {"auto": True, "decision": "allow", "optionId": "allow", "toolTitle": "Read", "by": "acceptEdits"}


def test_store_round_trip_decodes_the_same_kind() -> None:
    bus = EventBus()
    cases: list[ev.SessionEvent] = [
        ev.PermissionRequested(request=_request()),
        ev.PermissionDecided(auto=False, decision="deny", optionId="reject", requestId="perm-1"),
        ev.StatusChanged(status=State.RUNNING, previous=State.IDLE),
        ev.Ended(reason="agent_exited: code 1", status=State.CRASHED, exitCode=1),
        ev.Message(entry=TranscriptEntry(id=1, role="user", contentType="text", text="hi", timestamp=1)),
        ev.Tool(toolUseId="t1", title=None, kind=None, status="pending"),
        ev.Turn(stopReason="end_turn", usage=None, turn=1),
    ]
    for typed in cases:
        stored = msgspec.json.decode(msgspec.json.encode(bus.publish("s1", typed)), type=Event)
        assert ev.payload(stored) == typed


def test_events_stored_as_approval_read_back_as_their_kind() -> None:
    asked = ev.decode("approval", msgspec.to_builtins(_request()))
    assert isinstance(asked, ev.PermissionRequested) and asked.request.requestId == "perm-1"
    auto = ev.decode("approval", {"auto": True, "decision": "allow", "optionId": "o", "toolTitle": "Read"})
    assert auto == ev.PermissionDecided(auto=True, decision="allow", optionId="o", toolTitle="Read")
    assert isinstance(ev.decode("someday", {"x": 1}), ev.Unknown)


def test_sse_keeps_the_original_approval_payloads() -> None:
    bus = EventBus()
    asked = _sse(bus.publish("s1", ev.PermissionRequested(request=_request())))
    assert asked["event"] == "approval"
    assert asked["data"] == {**msgspec.to_builtins(_request()), "prompt": "Run"}  # prompt: the original's field
    no_prompt = _request()
    no_prompt.prompt = None
    assert _sse(bus.publish("s1", ev.PermissionRequested(request=no_prompt)))["data"]["prompt"] == 'Run {"cmd": "ls"}'
    auto = _sse(bus.publish("s1", ev.PermissionDecided(auto=True, decision="allow", optionId="o", toolTitle="Read",
                                                       by="acceptEdits")), scope="global")
    assert auto["event"] == "session_approval"
    assert auto["data"] == {"auto": True, "decision": "allow", "optionId": "o", "toolTitle": "Read", "prompt": "Read"}
    manual = _sse(bus.publish("s1", ev.PermissionDecided(auto=False, decision="deny", optionId="r",
                                                         requestId="perm-1", by="alice")))
    assert manual["event"] == "approval"
    assert manual["data"] == {"auto": False, "decision": "deny", "optionId": "r", "requestId": "perm-1"}


def test_sse_names_of_the_other_kinds() -> None:
    bus = EventBus()
    status = bus.publish("s1", ev.StatusChanged(status=State.IDLE, previous=State.RUNNING, detail="end_turn"))
    assert _sse(status)["event"] == "status" and _sse(status, "global")["event"] == "session_status_change"
    assert _sse(status)["data"] == {"status": "idle", "previous": "running", "detail": "end_turn"}
    tool = bus.publish("s1", ev.Tool(toolUseId="t1", title="Run", kind=None, status="pending"))
    assert _sse(tool, "global")["event"] == "session_tool"
    assert _sse(tool)["data"] == {"toolUseId": "t1", "title": "Run", "kind": None, "status": "pending"}


async def test_a_decision_says_who_decided(daemon: Any, workdir: Path) -> None:
    s = await daemon.create(workdir, prompt="tool:execute:Run:make all", reuse=False)
    asked = ev.payload(await daemon.wait_event(s["id"], "permission.requested"))
    assert isinstance(asked, ev.PermissionRequested) and asked.request.toolTitle == "Run"
    r = await daemon.http.post(f"/v1/sessions/{s['id']}/approve", json={"requestId": asked.request.requestId})
    assert r.status_code == 200, r.text
    decided = ev.payload(await daemon.wait_event(s["id"], "permission.decided"))
    assert isinstance(decided, ev.PermissionDecided) and decided.auto is False and decided.decision == "allow"
    assert decided.requestId == asked.request.requestId and decided.by


async def test_event_ids_never_go_back_even_when_a_daemon_persisted_none(tmp_path: Path) -> None:
    """Issue 13 item 2: each daemon stores where its ids start, so one killed before it persisted any event
    (its ids seen by a client, then lost) still pushes the next daemon's ids past them."""
    from aegisd.store._file import FileStore

    seen: list[int] = []
    for _ in range(3):  # three daemons on one store, each "killed" before its persister ran
        st = FileStore(tmp_path)
        await st.open()
        bus = EventBus(st)
        await bus.open()
        seen += [bus.publish("s1", ev.Chunk(role="assistant", contentType="text", text="x")).id for _ in range(3)]
        st._release()  # the lock of a killed daemon goes with it
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
