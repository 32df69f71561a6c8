from __future__ import annotations

import msgspec

from aegisd.core import wire as w
from aegisd.core.transcript import TranscriptBuilder


def upd(**kw: object) -> w.SessionUpdate | w.UnknownUpdate:
    return w.decode_update(msgspec.json.encode(kw))


def test_chunks_merge_and_close_on_kind_change() -> None:
    b = TranscriptBuilder(clock=lambda: 1)
    out = b.user_prompt("hi")
    for t in ("Hel", "lo"):
        out += b.update(upd(sessionUpdate="agent_message_chunk", content={"type": "text", "text": t}))
    out += b.update(upd(sessionUpdate="agent_thought_chunk", content={"type": "text", "text": "hmm"}))
    out += b.update(upd(sessionUpdate="agent_message_chunk", content={"type": "text", "text": "!"}))
    out += b.turn_end("end_turn", {"inputTokens": 3})
    assert [(e.id, e.role, e.contentType, e.text) for e in out] == [
        (1, "user", "text", "hi"), (2, "assistant", "text", "Hello"), (3, "assistant", "thinking", "hmm"),
        (4, "assistant", "text", "!"), (5, "system", "usage", "stop=end_turn inputTokens=3")]


def test_tool_call_refined_then_finished() -> None:
    b = TranscriptBuilder(next_id=10, clock=lambda: 1)
    out = b.update(upd(sessionUpdate="tool_call", toolCallId="t1", title="Terminal", kind="execute",
                       status="pending", rawInput={}))
    assert out == []
    out += b.update(upd(sessionUpdate="tool_call_update", toolCallId="t1", title="`ls`", rawInput={"command": "ls"}))
    assert out == []
    out += b.update(upd(sessionUpdate="tool_call_update", toolCallId="t1", status="completed",
                        content=[{"type": "content", "content": {"type": "text", "text": "a b"}}]))
    assert [(e.id, e.contentType, e.toolUseId) for e in out] == [(10, "tool_use", "t1"), (11, "tool_result", "t1")]
    assert out[0].text == '`ls` {"command":"ls"}'
    assert out[1].text == "a b"


def test_unknown_update_is_kept_not_fatal() -> None:
    u = upd(sessionUpdate="brand_new_variant", x=1)
    assert isinstance(u, w.UnknownUpdate) and u.kind == "brand_new_variant"
    assert TranscriptBuilder().update(u) == []


def test_plan_and_permission_entries() -> None:
    b = TranscriptBuilder(clock=lambda: 1)
    out = b.update(upd(sessionUpdate="plan", entries=[{"content": "a", "priority": "high", "status": "pending"}]))
    assert out[0].contentType == "plan" and out[0].text == "[pending] a"
    b.update(upd(sessionUpdate="tool_call", toolCallId="t2", title="Write", kind="edit"))
    params = w.RequestPermissionParams(sessionId="s", toolCall=w.ToolCallRef(toolCallId="t2", title="Write a.txt",
                                       rawInput={"path": "a.txt"}), options=[])
    out = b.permission_request(params)
    assert [e.contentType for e in out] == ["tool_use", "permission_request"]
    assert out[1].text.startswith("Permission requested: Write a.txt")
