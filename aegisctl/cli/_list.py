"""`ag list`: the session list. A module of its own, so the most frequent command loads nothing it does not
use (no turn stream, no other session commands)."""

from __future__ import annotations

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, json_option, pass_ctx


@click.command("list")
@click.option("--status", help="Filter: a state, or active / ended / busy / all.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--page", type=int, default=1, show_default=True)
@json_option
@pass_ctx
def list_(c: Ctx, status: str | None, limit: int, page: int) -> None:
    """List sessions, newest first."""
    res = c.call("session.list", status=status, limit=min(limit, 100), page=page)
    if c.json:
        out.echo_json(res)
        return
    sessions = res["sessions"]
    if not sessions:
        click.echo("No sessions." if not status else f"No {status} sessions.")
        return
    out.table(["id", "name", "status", "agent", "workdir", "age"],
              [[out.short_id(s["id"]), s["name"], out.status_text(s["status"]), s["agent"], s["workDir"],
                out.age(s["createdAt"])] for s in sessions])
    p = res["pagination"]
    if p["totalPages"] > 1:
        click.echo(f"page {p['page']}/{p['totalPages']} ({p['total']} sessions)")
