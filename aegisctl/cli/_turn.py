"""The turn stream of `ag run` and `ag read --follow`: text as it comes, tool calls, permission prompts answered on a
TTY, Ctrl-C once to interrupt and twice to kill; and why a session failed, for people."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import click

from aegisctl import _output as out
from aegisctl.cli._context import EXIT_ERROR, EXIT_OK, Ctx
from aegisctl.client import ClientError


def failure_lines(s: dict[str, Any]) -> list[str]:
    """Why a session failed, for people: the crash reason, then lastError (one line with the fix)."""
    lines = []
    crash = s.get("crash") or {}
    if crash.get("reason"):
        lines.append(str(crash["reason"]))
    last = (s.get("lastError") or {}).get("message")
    if last and last not in lines:
        lines.append(str(last))
    return lines


# ---- the turn stream (run, read --follow) -------------------------------------------------------------
def _ask(prompt: str) -> bool:
    try:
        answer = click.prompt(prompt, default="N", show_default=False, err=True)
    except (click.Abort, EOFError):
        return False
    return answer.strip().lower() in ("y", "yes")


def stream_turn(c: Ctx, sid: str, *, interactive: bool, accept: bool, quiet: bool,
                after: int | None = None) -> int:
    """Stream a session's turn to the terminal. Returns the exit code. Ctrl-C once interrupts the turn,
    twice kills the session."""
    last_id = after
    interrupts = 0
    stop_reason: str | None = None
    turn_error: str | None = None
    mid_line = False
    while True:
        stream: Iterator[dict[str, Any]] = c.client().stream("session.follow", id=sid, untilIdle=True,
                                                           afterId=last_id)
        try:
            for ev in stream:
                last_id = ev["id"]
                kind, data = ev["event"], ev.get("data") or {}
                if kind == "chunk" and data.get("contentType") == "text":
                    click.echo(data["text"], nl=False)
                    mid_line = not data["text"].endswith("\n")
                elif kind == "message" and data.get("contentType") in ("tool_use", "tool_result", "tool_error"):
                    if mid_line:
                        click.echo()
                        mid_line = False
                    if data["contentType"] == "tool_use":
                        click.echo(out.style(f"⏺ {out.one_line(data['text'], 120)}", fg="cyan"), err=True)
                    elif data["contentType"] == "tool_error":
                        click.echo(out.style(f"  ✗ {out.one_line(data['text'], 120)}", fg="red"), err=True)
                    elif not quiet:
                        click.echo(out.style(f"  ⎿ {out.one_line(data['text'], 120)}", dim=True), err=True)
                elif kind == "permission.requested":
                    if mid_line:
                        click.echo()
                        mid_line = False
                    desc = f"{data['toolTitle']} {out.one_line(data.get('rawInput'), 160)}"
                    req = str(data["requestId"])
                    if interactive:
                        ok = _ask(out.style(f"Allow {desc}? [y/N]", fg="yellow", bold=True))
                        try:  # this very request: if it was decided elsewhere meanwhile, nothing else is
                            c.call("session.approve" if ok else "session.reject", id=sid, requestId=req)
                        except ClientError as exc:
                            if exc.code not in ("NO_PENDING_PERMISSION", "PERMISSION_REQUEST_MISMATCH"):
                                raise
                            click.echo(out.style("  (already decided elsewhere: your answer was not applied)",
                                                 dim=True), err=True)
                    else:
                        click.echo(f"Permission requested: {desc}\n  approve: ag approve {out.short_id(sid)} --request "
                                   f"{req}   reject: ag reject {out.short_id(sid)} --request {req}", err=True)
                elif kind == "turn":
                    stop_reason = data.get("stopReason")
                    turn_error = data.get("error")
                elif kind == "ended":
                    if mid_line:
                        click.echo()
                    s = c.call("session.get", id=sid)
                    lines = failure_lines(s) or [str(data.get("reason"))]
                    click.echo(f"error: session {data.get('status')}: " + "\n  ".join(lines), err=True)
                    return EXIT_ERROR
            break
        except KeyboardInterrupt:
            if mid_line:
                click.echo()
                mid_line = False
            interrupts += 1
            if interrupts == 1:
                try:
                    click.echo("Interrupting the turn (Ctrl-C again kills the session)…", err=True)
                    c.call("session.interrupt", id=sid)
                    continue
                except KeyboardInterrupt:  # the second press came while the first was being handled
                    interrupts += 1
            _kill_quietly(c, sid)
            return 130
    if mid_line:
        click.echo()
    if stop_reason in (None, "end_turn"):
        return EXIT_OK if interrupts == 0 else 130
    if stop_reason == "error":  # the agent refused the prompt: why, and the fix (the session's lastError)
        if turn_error is None:
            turn_error = (c.call("session.get", id=sid).get("lastError") or {}).get("message")
        click.echo(f"error: {turn_error or 'the agent ended the turn with an error and gave no reason'}", err=True)
        return EXIT_ERROR
    click.echo(f"turn ended: {stop_reason}", err=True)
    return 130 if stop_reason == "cancelled" else EXIT_ERROR


def _kill_quietly(c: Ctx, sid: str) -> None:
    """Kill the session; further Ctrl-C presses are ignored until it is done."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        click.echo("Killing the session…", err=True)
        c.call("session.kill", id=sid)
    except ClientError:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
