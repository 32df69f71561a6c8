"""`ag mcp` on the official MCP Python SDK (the optional extra `mcp`): its low-level server speaks the protocol on
stdin/stdout (handshake, version negotiation, JSON-RPC errors); the handlers here list and call the tools of
``_tools``, read the resources and render the prompts.

The SDK runs on anyio; `ag mcp` is a process of its own, and runs it on trio, the project's event loop. Calls to
the daemon are the blocking client's, each in a worker thread, so a long `wait_for_session` holds up nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from aegisctl.client import Client
from aegisctl.mcp._tools import (
    BY_NAME,
    TOOLS,
    Daemon,
    ToolError,
    call_tool,
    description,
    tool_annotations,
    tool_schema,
)

INSTRUCTIONS = ("Aegis supervises coding-agent sessions. Create one with create_session, follow it with "
                "wait_for_session, read it with get_transcript, and answer its permission requests with "
                "approve_permission / reject_permission, passing the pendingPermission.requestId you looked at "
                "(list_pending_permissions shows every waiting request).")
JSON = "application/json"
RESOURCES = [
    types.Resource(uri="aegis://sessions", name="sessions", description="Every session, compact", mime_type=JSON),
    types.Resource(uri="aegis://health", name="health", description="The daemon's health", mime_type=JSON),
    types.Resource(uri="aegis://permissions/pending", name="pending-permissions", mime_type=JSON,
                   description="Every permission request waiting for a decision"),
]
RESOURCE_TEMPLATES = [
    types.ResourceTemplate(uri_template="aegis://sessions/{id}/transcript", name="transcript", mime_type=JSON,
                           description="A session's transcript"),
    types.ResourceTemplate(uri_template="aegis://sessions/{id}/pane", name="pane", mime_type="text/plain",
                           description="A plain-text rendering of a session's recent transcript"),
]
PROMPTS = [
    types.Prompt(name="delegate_task", description="Hand a task to a new Aegis session and follow it to the end",
                 arguments=[types.PromptArgument(name="task", required=True),
                            types.PromptArgument(name="workDir", required=True)]),
    types.Prompt(name="debug_session", description="Find out why a session is stuck or failed",
                 arguments=[types.PromptArgument(name="sessionId", required=True)]),
]


def _invalid(exc: ToolError) -> MCPError:
    """A request about no such resource or prompt: the JSON-RPC error invalid params, with our code in front."""
    return MCPError(code=types.INVALID_PARAMS, message=f"{exc.code}: {exc.message}")


def build(connect: Callable[[], Client]) -> Server[Any]:
    """The MCP server over the daemon that ``connect`` reaches."""
    daemon = Daemon(connect)
    schemas = {t.name: tool_schema(t) for t in TOOLS}
    tools = [types.Tool(name=t.name, description=description(t), input_schema=schemas[t.name],
                        annotations=types.ToolAnnotations(**_snake(tool_annotations(t)))) for t in TOOLS]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = BY_NAME.get(params.name)
        if tool is None:
            raise _invalid(ToolError("UNKNOWN_TOOL", f"no tool {params.name!r}"))
        result, is_error = await anyio.to_thread.run_sync(call_tool, daemon, tool, schemas[tool.name],
                                                          params.arguments or {})
        text = json.dumps(result, indent=None if is_error else 1, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error,
                                    structured_content=result if isinstance(result, dict) and not is_error else None)

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_resource_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=RESOURCE_TEMPLATES)

    def read(uri: str) -> types.TextResourceContents:
        if uri == "aegis://sessions":
            data: Any = BY_NAME["list_sessions"].run(daemon, BY_NAME["list_sessions"], {})  # type: ignore[misc]
        elif uri == "aegis://health":
            data = daemon.call("health")
        elif uri == "aegis://permissions/pending":
            data = daemon.call("permissions.pending")
        elif uri.startswith("aegis://sessions/") and uri.endswith("/transcript"):
            data = daemon.call("session.transcript.cursor", id=uri.split("/")[3], limit=200)
        elif uri.startswith("aegis://sessions/") and uri.endswith("/pane"):
            pane = daemon.call("session.pane", id=uri.split("/")[3])
            return types.TextResourceContents(uri=uri, mime_type="text/plain", text=pane.get("pane", ""))
        else:
            raise ToolError("UNKNOWN_RESOURCE", f"no resource {uri}")
        return types.TextResourceContents(uri=uri, mime_type=JSON, text=json.dumps(data))

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        try:
            contents = await anyio.to_thread.run_sync(read, str(params.uri))
        except ToolError as exc:
            raise _invalid(exc) from None
        return types.ReadResourceResult(contents=[contents])

    async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        a = params.arguments or {}
        try:
            if params.name == "delegate_task":
                text = (f"Use the aegis tools to delegate this task to a new session in {a['workDir']}: "
                        "create_session with the task as prompt, then wait_for_session until it needs attention; "
                        "answer permission requests only when they are safe; finally report the result from "
                        f"get_transcript.\n\nTask: {a['task']}")
            elif params.name == "debug_session":
                text = (f"Find out why Aegis session {a['sessionId']} is stuck or failed: get_status (state, "
                        "pending permission, crash reason and stderr tail), then get_transcript, then say what to "
                        "do.")
            else:
                raise _invalid(ToolError("UNKNOWN_PROMPT", f"no prompt {params.name!r}"))
        except KeyError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=f"invalid params: missing argument {exc}") from None
        return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=types.TextContent(
            type="text", text=text))])

    return Server("aegis", version=version("aegis-py"), title="Aegis", instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call, on_list_resources=list_resources,
                  on_list_resource_templates=list_resource_templates, on_read_resource=read_resource,
                  on_list_prompts=list_prompts, on_get_prompt=get_prompt)


def _snake(hints: dict[str, Any]) -> dict[str, Any]:
    """readOnlyHint -> read_only_hint (the SDK's field names)."""
    import re

    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in hints.items()}


DRAIN_SECONDS = 5.0  # how long requests still running when stdin closes may take to answer


@asynccontextmanager
async def _stdio() -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
    """The SDK's stdio transport, with two things the server owes its client: an answer to a line that is not a
    JSON-RPC message (the SDK drops it silently): the parse error, or invalid request, with a null id; and, when
    stdin closes, the answers to the requests still running (the SDK would end them unanswered), for a while."""
    async with stdio_server() as (read, write):
        requests_send, requests = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        answers, answers_receive = anyio.create_memory_object_stream[SessionMessage](0)
        running: set[Any] = set()  # ids of the requests not answered yet
        answered = anyio.Event()

        async def relay_requests() -> None:
            nonlocal answered
            async with requests_send:
                async for item in read:
                    if isinstance(item, Exception):
                        garbled = isinstance(item, ValidationError) and any(
                            e["type"] == "json_invalid" for e in item.errors())
                        error = types.ErrorData(code=types.PARSE_ERROR, message="parse error") if garbled else \
                            types.ErrorData(code=types.INVALID_REQUEST, message="invalid request")
                        await write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error)))
                        continue
                    if isinstance(item.message, types.JSONRPCRequest):
                        running.add(item.message.id)
                    await requests_send.send(item)
                with anyio.move_on_after(DRAIN_SECONDS):  # stdin closed: let the running requests answer
                    while running:
                        answered = anyio.Event()
                        await answered.wait()

        async def relay_answers() -> None:
            async with write, answers_receive:  # the server is done: so is stdout
                async for item in answers_receive:
                    await write.send(item)
                    if isinstance(item.message, types.JSONRPCResponse | types.JSONRPCError):
                        running.discard(item.message.id)
                        answered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay_requests)
            tg.start_soon(relay_answers)
            yield requests, answers


def serve(connect: Callable[[], Client]) -> int:
    """Answer MCP requests on stdin/stdout until stdin closes."""
    server = build(connect)

    async def main() -> None:
        async with _stdio() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    anyio.run(main, backend="trio")
    return 0
