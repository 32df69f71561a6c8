"""A local mock of the Anthropic Messages API, enough for claude-agent-acp / Claude Code to run offline.

Replies are scripted from the last user message:
  - contains ``TOOL:<command>`` and the request offers tools -> a ``tool_use`` block for ``Bash``;
  - the last message carries a ``tool_result`` -> text ``done: <result>``;
  - anything else -> text ``mock reply: <first 50 chars of the last user text>``.
Every request is recorded in ``MockAnthropic.requests`` for assertions.

Run standalone for debugging: ``python -m tests.realagent.mock_anthropic --port 0``."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import trio


def _last_user(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(text of the last user message, its tool_result blocks)."""
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content, []
        texts, results = [], []
        for block in content or []:
            if block.get("type") == "text":
                texts.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                results.append(block)
        # Claude Code adds <system-reminder> blocks around the user's words: keep the user's own text
        own = [t for t in texts if not t.lstrip().startswith("<system-reminder>")]
        return "\n".join(own or texts), results
    return "", []


def _result_text(block: dict[str, Any]) -> str:
    c = block.get("content")
    if isinstance(c, str):
        return c
    return " ".join(x.get("text", "") for x in c or [] if isinstance(x, dict))


class MockAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    def reply(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """(content blocks, stop_reason) for one request."""
        text, results = _last_user(body)
        tools = {t.get("name") for t in body.get("tools") or []}
        if results:
            return [{"type": "text", "text": "done: " + _result_text(results[-1])[:200]}], "end_turn"
        m = re.search(r"MCP:(\S+) (\{.*\})", text, re.S)
        if m:  # a call of an MCP tool the agent was given (Claude Code names them mcp__<server>__<tool>)
            if m.group(1) not in tools:
                return [{"type": "text", "text": f"tool not available: {m.group(1)}; have: {sorted(tools)}"}], \
                    "end_turn"
            return [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": m.group(1),
                     "input": json.loads(m.group(2))}], "tool_use"
        m = re.search(r"TOOL:(.+)", text)
        if m and "Bash" in tools:
            cmd = m.group(1).strip().splitlines()[0]
            return [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": "Bash",
                     "input": {"command": cmd, "description": "run it"}}], "tool_use"
        return [{"type": "text", "text": f"mock reply: {text.strip()[:50]}"}], "end_turn"

    # ---- HTTP ----------------------------------------------------------------------------------
    async def serve(self, *, host: str = "127.0.0.1", port: int = 0,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.url = f"http://{host}:{listeners[0].socket.getsockname()[1]}"
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        while b"\r\n" not in buf:
                            buf += await stream.receive_some(65536)
                        size_line, buf = buf.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        while len(buf) < size + 2:
                            buf += await stream.receive_some(65536)
                        body, buf = body + buf[:size], buf[size + 2:]
                        if size == 0:
                            break
                else:
                    length = int(headers.get("content-length", "0"))
                    while len(buf) < length:
                        buf += await stream.receive_some(65536)
                    body, buf = buf[:length], buf[length:]
                await self._respond(stream, method, target, body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return
        finally:
            await stream.aclose()

    async def _send(self, stream: trio.SocketStream, status: int, ctype: str, payload: bytes) -> None:
        head = (f"HTTP/1.1 {status} OK\r\ncontent-type: {ctype}\r\ncontent-length: {len(payload)}\r\n"
                f"request-id: req_mock\r\n\r\n").encode()
        await stream.send_all(head + payload)

    async def _respond(self, stream: trio.SocketStream, method: str, target: str, raw: bytes) -> None:
        path = target.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        self.requests.append({"method": method, "path": path, "body": body})
        if method != "POST" or not path.endswith("/v1/messages"):
            if path.endswith("/count_tokens"):
                await self._send(stream, 200, "application/json", b'{"input_tokens": 10}')
            else:
                await self._send(stream, 200, "application/json", b"{}")
            return
        blocks, stop = self.reply(body)
        model = body.get("model", "claude-mock")
        msg_id = f"msg_{uuid.uuid4().hex[:20]}"
        usage = {"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        if not body.get("stream"):
            message = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": blocks,
                       "stop_reason": stop, "stop_sequence": None, "usage": usage}
            await self._send(stream, 200, "application/json", json.dumps(message).encode())
            return
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}})]
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {"type": "text", "text": ""}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": block["text"]}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {**block, "input": {}}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop,
                                                                           "stop_sequence": None},
                                         "usage": {"output_tokens": 7}}))
        events.append(("message_stop", {"type": "message_stop"}))
        payload = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
        await self._send(stream, 200, "text/event-stream", payload)


if __name__ == "__main__":
    import argparse
    import functools

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    async def main() -> None:
        mock = MockAnthropic()
        async with trio.open_nursery() as n:
            url = await n.start(functools.partial(mock.serve, host="127.0.0.1", port=args.port))
            print(url, flush=True)

    trio.run(main)
