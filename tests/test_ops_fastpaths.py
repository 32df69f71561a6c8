"""The quick paths of the operation path (issue 14, the control socket) give what the general ones gave: the
session view built from a tuple equals the one built from a dict, handlers that never wait are known as such,
and request ids stay unique."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from msgspec import UNSET

from aegisd import ops
from aegisd.core.models import PendingPermission, QueuedPrompt, SessionRecord, TokenUsage
from aegisd.core.states import State
from aegisd.ops._attention import SessionWait
from aegisd.ops._registry import OpContext
from aegisd.ops._sessions import ForkedSession
from aegisd.ops._types import ActionHint, CreatedSession, PromptDelivery, SessionView, created_view, session_view


def reference_view(cls: Any, rec: SessionRecord, base_url: str, **extra: Any) -> Any:
    """The view as it was built before the quick path: every field by keyword, from a dict of the record."""
    fields = msgspec.structs.asdict(rec)
    fields.pop("readOffset", None)
    fields.pop("promptQueue", None)
    hints: Any = UNSET
    if rec.status == State.PERMISSION_PROMPT:
        base = f"{base_url}/v1/sessions/{rec.id}"
        body = {"requestId": rec.pendingPermission.requestId} if rec.pendingPermission is not None else UNSET
        hints = {"approve": ActionHint("POST", f"{base}/approve", "Approve the pending request", body),
                 "reject": ActionHint("POST", f"{base}/reject", "Reject the pending request", body)}
    return cls(**fields, label=rec.name, actionHints=hints, **extra)


RECORDS = [
    SessionRecord(id="s1", workDir="/w"),
    SessionRecord(id="s2", workDir="/w", status=State.IDLE, name="named", model="m", models=["a", "b"],
                  createdAt=5, lastActivity=9, agentInfo={"name": "fake", "version": "1"}, turns=3,
                  promptQueue=[QueuedPrompt(id="q", text="t", at=1)], readOffset=1234,
                  tokenUsage=TokenUsage(), availableCommands=[{"name": "x"}], ownerKeyId="k", node="n1"),
    SessionRecord(id="s3", workDir="/w", status=State.PERMISSION_PROMPT,
                  pendingPermission=PendingPermission(requestId="r1", toolTitle="Bash", rawInput={"c": "ls"})),
    SessionRecord(id="s4", workDir="/w", status=State.PERMISSION_PROMPT),  # hints without a body
    SessionRecord(id="s5", workDir="/w", status=State.KILLED, endedAt=7, endReason="killed", parentId="s1"),
]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.id)
def test_session_view_from_a_tuple_is_the_same_view(rec: SessionRecord) -> None:
    got = session_view(rec, "http://h:1")
    want = reference_view(SessionView, rec, "http://h:1")
    assert got == want
    assert msgspec.json.encode(got) == msgspec.json.encode(want)  # the same bytes on the wire
    assert got.readOffset is UNSET and got.promptQueue is UNSET  # the daemon's own fields never leave it
    wait = session_view(rec, "", SessionWait, timedOut=True)
    assert wait == reference_view(SessionWait, rec, "", timedOut=True)
    delivery = {"delivered": True, "attempts": 1}
    created = created_view(rec, "http://h:1", reused=False, delivery=delivery)
    assert created == reference_view(CreatedSession, rec, "http://h:1", reused=False,
                                     promptDelivery=PromptDelivery(**delivery))
    forked = created_view(rec, "", cls=ForkedSession, reused=False, delivery=delivery, seededEntries=2)
    assert forked == reference_view(ForkedSession, rec, "", reused=False, promptDelivery=PromptDelivery(**delivery),
                                    seededEntries=2)


def test_session_view_with_overrides_keeps_the_keyword_path() -> None:
    rec = RECORDS[1]
    got = created_view(rec, "", reused=True, delivery={"delivered": True, "attempts": 1},
                       overrides={"status": State.RUNNING, "name": "other"})
    assert got.status == State.RUNNING and got.name == "other" and got.label == "named"
    assert got.readOffset is UNSET and got.promptQueue is UNSET


def test_only_plain_function_handlers_run_at_once() -> None:
    assert ops.get_op("session.get").sync is True
    assert ops.get_op("session.create").sync is False  # waits for the agent
    assert ops.get_op("session.follow").sync is False  # a stream
    assert all(not o.sync for o in ops.REGISTRY.values() if o.stream)


def test_request_ids_are_unique_hex() -> None:
    ids = [OpContext(services=None).request_id for _ in range(10_000)]  # type: ignore[arg-type]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
