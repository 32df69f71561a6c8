"""What the agent offers beyond prompts: its slash commands (discovered from ACP available_commands_update and
sent as prompts), and answers to its questions (ACP agents ask through permission requests instead)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from aegisd.core.errors import Conflict, ValidationError
from aegisd.core.states import State
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import IdParams, Ok, SessionRef


class CommandParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    command: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]


class AnswerParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    questionId: str
    answer: str


class CommandSent(msgspec.Struct):
    ok: bool
    delivered: bool
    queued: bool


class SlashCommand(msgspec.Struct):
    name: str
    description: str


class Commands(msgspec.Struct):
    commands: list[SlashCommand]
    live: bool  # the session still runs (an ended one's list is what it last advertised)


@op("session.command", CommandParams, result=CommandSent, permission="send",
    summary="Send a slash command (the agent's available_commands)")
async def command(ctx: OpContext, p: CommandParams) -> CommandSent:
    rec = ctx.session(p.id)
    text = p.command if p.command.startswith("/") else "/" + p.command
    name = text[1:].split()[0] if len(text) > 1 else ""
    known = {c.get("name") for c in rec.availableCommands}
    if known and name not in known:
        raise ValidationError(f"unknown command /{name}; the agent offers: "
                              f"{', '.join('/' + str(k) for k in sorted(known, key=str))}")
    res = await ctx.services.manager.command(rec.id, "send", text=text)
    return CommandSent(ok=True, delivered=res["delivered"], queued=res["queued"])


@op("session.commands", IdParams, result=Commands, permission="send",
    summary="The slash commands the agent advertised (ACP available_commands_update); the original scraped "
            "them from the terminal")
async def discover_commands(ctx: OpContext, p: IdParams) -> Commands:
    rec = ctx.session(p.id)
    return Commands(commands=[SlashCommand(name=c.get("name", ""), description=c.get("description", ""))
                              for c in rec.availableCommands],
                    live=rec.status not in (State.COMPLETED, State.KILLED, State.CRASHED))


@op("session.answer", AnswerParams, result=Ok, permission="send",
    summary="Answer a question the agent asked")
async def answer(ctx: OpContext, p: AnswerParams) -> Ok:
    # ACP agents ask through permission requests: this always answers 409, kept for the original's clients
    ctx.session(p.id)
    raise Conflict(f"no pending question {p.questionId!r} on this session (ACP agents ask through permission "
                   "requests; use approve/reject)")
