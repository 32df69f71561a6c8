"""`ag events`: the live event stream of every session, or of one."""

from __future__ import annotations

import sys

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, json_option, pass_ctx


@click.command()
@click.argument("session_id", required=False)
@click.option("--after", type=int, help="Replay events after this id first.")
@json_option
@pass_ctx
def events(c: Ctx, session_id: str | None, after: int | None) -> None:
    """Print live events (all sessions, or one) until interrupted."""
    try:
        for ev in c.client().stream("events.follow", sessionId=session_id, afterId=after):
            if c.json:
                click.echo(out.one_line(ev, 100_000))
            else:
                data = ev.get("data") or {}
                detail = data.get("status") or data.get("text") or data.get("reason") or data.get("stopReason") \
                    or data.get("toolTitle") or ""
                click.echo(f"{ev['id']:>8} {out.short_id(ev['sessionId'])} {ev['event']:<8} {out.one_line(detail, 80)}")
    except KeyboardInterrupt:
        sys.exit(130)
