"""Permission requests: approve or reject the one pending (or only the one named)."""

from __future__ import annotations

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, json_option, pass_ctx


def _decide(c: Ctx, op: str, session_id: str, option: str | None, request: str | None) -> None:
    res = c.call(op, id=session_id, optionId=option, requestId=request)
    if c.json:
        out.echo_json(res)
    else:
        click.echo(f"{'Approved' if op == 'session.approve' else 'Rejected'} ({res['optionId']}): request "
                   f"{res['requestId']}.")


_REQUEST_HELP = ("Decide only this request (its requestId, as `ag show` or the notification gave it); if another "
                 "one is pending, nothing is decided (exit 1, PERMISSION_REQUEST_MISMATCH).")


@click.command()
@click.argument("session_id")
@click.option("--option", help="Pick this option id instead of the least-privilege allow option.")
@click.option("--request", "request", metavar="REQUEST_ID", help=_REQUEST_HELP)
@json_option
@pass_ctx
def approve(c: Ctx, session_id: str, option: str | None, request: str | None) -> None:
    """Approve the pending permission request."""
    _decide(c, "session.approve", session_id, option, request)


@click.command()
@click.argument("session_id")
@click.option("--option", help="Pick this option id instead of reject_once.")
@click.option("--request", "request", metavar="REQUEST_ID", help=_REQUEST_HELP)
@json_option
@pass_ctx
def reject(c: Ctx, session_id: str, option: str | None, request: str | None) -> None:
    """Reject the pending permission request."""
    _decide(c, "session.reject", session_id, option, request)
