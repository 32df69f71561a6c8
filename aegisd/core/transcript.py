"""Turns ACP traffic into transcript entries (pure: no I/O, fed updates, returns closed entries).

Consecutive chunks of one kind (agent text, thoughts, replayed user text) are merged into one entry, which
is closed when something else happens. A tool call is held open while its updates refine it (the real title
and input usually come after the first `tool_call`), and is written out when it needs permission, finishes,
or the turn ends; its result becomes a second entry. Entry ids are dense and 1-based per session."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aegisd.core import wire as w
from aegisd.core.models import TranscriptEntry, now_ms

TOOL_RESULT_LIMIT = 2000


def _compact(value: Any, limit: int = 500) -> str:
    if value in (None, {}, [], ""):
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "…"


def _tool_content_text(content: list[dict[str, Any]] | None) -> str:
    parts = []
    for item in content or []:
        kind = item.get("type")
        if kind == "content":
            parts.append(w.content_text(item.get("content")))
        elif kind == "diff":
            parts.append(f"diff {item.get('path', '')}")
        elif kind == "terminal":
            parts.append(f"[terminal {item.get('terminalId', '')}]")
    return "\n".join(p for p in parts if p)


class _OpenTool:
    __slots__ = ("id", "kind", "name", "raw_input", "title", "written")

    def __init__(self, call: w.ToolCall) -> None:
        self.id = call.toolCallId
        self.title = call.title or ""
        self.kind = call.kind or "other"
        self.raw_input = call.rawInput
        self.name: str | None = None
        self.written = False


class TranscriptBuilder:
    def __init__(self, *, next_id: int = 1, clock: Callable[[], int] = now_ms) -> None:
        self._next_id = next_id
        self._clock = clock
        self._open_text: tuple[str, str] | None = None  # (role, contentType) of the entry being merged
        self._open_parts: list[str] = []
        self._tools: dict[str, _OpenTool] = {}

    @property
    def next_id(self) -> int:
        return self._next_id

    def _entry(self, role: str, content_type: str, text: str, **kw: Any) -> TranscriptEntry:
        entry = TranscriptEntry(id=self._next_id, role=role, contentType=content_type, text=text,
                                timestamp=self._clock(), **kw)
        self._next_id += 1
        return entry

    def _close_text(self) -> list[TranscriptEntry]:
        if self._open_text is None:
            return []
        role, ctype = self._open_text
        text = "".join(self._open_parts)
        self._open_text, self._open_parts = None, []
        return [self._entry(role, ctype, text)] if text else []

    def _text(self, role: str, ctype: str, text: str) -> list[TranscriptEntry]:
        out: list[TranscriptEntry] = []
        if self._open_text != (role, ctype):
            out = self._close_text()
            self._open_text = (role, ctype)
        self._open_parts.append(text)
        return out

    def _write_tool(self, tool: _OpenTool) -> list[TranscriptEntry]:
        if tool.written:
            return []
        tool.written = True
        args = _compact(tool.raw_input)
        text = f"{tool.title}" + (f" {args}" if args else "")
        return [self._entry("assistant", "tool_use", text, toolName=tool.name or tool.title or tool.kind,
                            toolUseId=tool.id)]

    # ---- inputs --------------------------------------------------------------------------------
    def user_prompt(self, text: str) -> list[TranscriptEntry]:
        return self._close_text() + [self._entry("user", "text", text)]

    def update(self, update: w.SessionUpdate | w.UnknownUpdate) -> list[TranscriptEntry]:
        if isinstance(update, w.AgentMessageChunk):
            return self._text("assistant", "text", w.content_text(update.content))
        if isinstance(update, w.AgentThoughtChunk):
            return self._text("assistant", "thinking", w.content_text(update.content))
        if isinstance(update, w.UserMessageChunk):
            return self._text("user", "text", w.content_text(update.content))
        if isinstance(update, w.ToolCall):
            out = self._close_text()
            self._tools[update.toolCallId] = tool = _OpenTool(update)
            if update.status in ("completed", "failed"):
                out += self._finish_tool(tool, update.status, update.content, update.rawOutput)
            return out
        if isinstance(update, w.ToolCallUpdate):
            out = self._close_text()
            tool = self._tools.get(update.toolCallId)  # type: ignore[assignment]
            if tool is None:  # an update for a call we never saw: keep it anyway
                tool = self._tools[update.toolCallId] = _OpenTool(w.ToolCall(toolCallId=update.toolCallId,
                                                                             title=update.title or ""))
            if update.title:
                tool.title = update.title
            if update.kind:
                tool.kind = update.kind
            if update.rawInput not in (None, {}):
                tool.raw_input = update.rawInput
            if update.status == "in_progress":
                out += self._write_tool(tool)
            elif update.status in ("completed", "failed"):
                out += self._finish_tool(tool, update.status, update.content, update.rawOutput)
            return out
        if isinstance(update, w.Plan):
            lines = [f"[{e.get('status', 'pending')}] {e.get('content', '')}" for e in update.entries]
            return self._close_text() + [self._entry("assistant", "plan", "\n".join(lines))]
        return []  # commands, modes, config, info, usage: session fields, not transcript text

    def _finish_tool(self, tool: _OpenTool, status: str, content: Any, raw_output: Any) -> list[TranscriptEntry]:
        out = self._write_tool(tool)
        text = _tool_content_text(content) or _compact(raw_output, TOOL_RESULT_LIMIT)
        if len(text) > TOOL_RESULT_LIMIT:
            text = text[:TOOL_RESULT_LIMIT] + "…"
        ctype = "tool_result" if status == "completed" else "tool_error"
        out.append(self._entry("assistant", ctype, text, toolName=tool.name or tool.title or tool.kind,
                               toolUseId=tool.id))
        self._tools.pop(tool.id, None)
        return out

    def permission_request(self, params: w.RequestPermissionParams) -> list[TranscriptEntry]:
        out = self._close_text()
        tc = params.toolCall
        tool = self._tools.get(tc.toolCallId)
        if tool is not None:
            if tc.title:
                tool.title = tc.title
            if tc.rawInput not in (None, {}):
                tool.raw_input = tc.rawInput
            tool.name = tc.name or tool.name
            out += self._write_tool(tool)
        title = tc.title or (tool.title if tool else "") or "tool"
        args = _compact(tc.rawInput if tc.rawInput not in (None, {}) else (tool.raw_input if tool else None))
        out.append(self._entry("system", "permission_request", f"Permission requested: {title}"
                               + (f" {args}" if args else ""), toolName=title, toolUseId=tc.toolCallId or None))
        return out

    def permission_decision(self, text: str, tool_use_id: str | None) -> list[TranscriptEntry]:
        return self._close_text() + [self._entry("system", "permission_decision", text,
                                                 toolUseId=tool_use_id)]

    def turn_end(self, stop_reason: str, usage: dict[str, Any] | None) -> list[TranscriptEntry]:
        out = self._close_text()
        for tool in list(self._tools.values()):
            out += self._write_tool(tool)
        self._tools.clear()
        if usage:
            parts = [f"{k}={v}" for k, v in usage.items() if isinstance(v, (int, float))]
            out.append(self._entry("system", "usage", f"stop={stop_reason} " + " ".join(parts)))
        return out

    def system(self, text: str, content_type: str = "text") -> list[TranscriptEntry]:
        return self._close_text() + [self._entry("system", content_type, text)]

    def flush(self) -> list[TranscriptEntry]:
        return self._close_text()
