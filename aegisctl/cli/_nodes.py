"""The nodes of the cluster: list them, drain one (it takes no new sessions) and undrain it."""

from __future__ import annotations

from typing import Any

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, json_option, pass_ctx

STATUS_COLOURS = {"up": "green", "draining": "yellow", "down": "red"}


def _status(status: str) -> str:
    return out.style(status, fg=STATUS_COLOURS.get(status))


def _row(n: dict[str, Any]) -> list[str]:
    capacity = str(n["capacity"]) if n["capacity"] else "∞"
    return [n["id"] + (" *" if n.get("local") else ""), _status(n["status"]), f"{n['sessions']}/{capacity}",
            n["url"] or "-", n["version"], out.age(n["lastHeartbeat"])]


@click.group("nodes", invoke_without_command=True)
@json_option
@click.pass_context
def nodes_group(ctx: click.Context) -> None:
    """The nodes of the cluster, with their status and load (with no subcommand: list them).

    \b
    One daemon is a cluster of one node; several daemons on one PostgreSQL store are one cluster.
    The node marked * is the one that answered. SESSIONS/CAPACITY: its live sessions and its
    maxSessions; HEARTBEAT: how long ago it last said it is alive. A draining node takes no new
    sessions; those it runs go on."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(nodes_list)


@nodes_group.command("list")
@json_option
@pass_ctx
def nodes_list(c: Ctx) -> None:
    """List the nodes (the default of `ag nodes`)."""
    res = c.call("nodes.list")
    if c.json:
        out.echo_json(res)
        return
    out.table(["id", "status", "sessions/capacity", "url", "version", "heartbeat"], [_row(n) for n in res])


def _set_draining(c: Ctx, node_id: str, draining: bool) -> None:
    res = c.call("nodes.drain" if draining else "nodes.undrain", id=node_id)
    if c.json:
        out.echo_json(res)
    elif draining:
        click.echo(f"Node {res['id']} is draining: it takes no new sessions; its {res['sessions']} live "
                   f"session(s) go on. `ag nodes undrain {res['id']}` ends it.")
    else:
        click.echo(f"Node {res['id']} takes new sessions again ({res['status']}).")


@nodes_group.command("drain")
@click.argument("node_id")
@json_option
@pass_ctx
def nodes_drain(c: Ctx, node_id: str) -> None:
    """Drain a node (admin): it takes no new sessions; those it runs go on."""
    _set_draining(c, node_id, True)


@nodes_group.command("undrain")
@click.argument("node_id")
@json_option
@pass_ctx
def nodes_undrain(c: Ctx, node_id: str) -> None:
    """Undrain a node (admin): it takes new sessions again."""
    _set_draining(c, node_id, False)
