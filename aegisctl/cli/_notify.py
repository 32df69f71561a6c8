"""Notification channels and alerting: channels, alerts stats, alerts test."""

from __future__ import annotations

import sys

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, json_option, pass_ctx


@click.command()
@json_option
@pass_ctx
def channels(c: Ctx) -> None:
    """Notification channels (webhooks, Telegram, email) and whether their last delivery worked."""
    res = c.call("channels.health")
    if c.json:
        out.echo_json(res)
        return
    if not res:
        click.echo("No notification channels configured (webhooks, telegram, email in the config).")
        return
    out.table(["channel", "where", "state", "last success", "last error"],
              [[h["channel"], out.one_line(h["endpoint"], 50),
                out.style("ok", fg="green") if h["healthy"] else out.style("failing", fg="red"),
                out.age(h.get("lastSuccess")), out.one_line(h.get("lastError") or "-", 50)] for h in res])


@click.group("alerts")
def alerts_group() -> None:
    """Alerting: failures counted per kind, and alert webhooks."""


@alerts_group.command("stats")
@json_option
@pass_ctx
def alerts_stats(c: Ctx) -> None:
    """Failures counted per kind, alerts fired and deliveries."""
    res = c.call("alerts.stats")
    if c.json:
        out.echo_json(res)
        return
    click.echo(f"{res['webhookCount']} alert webhook(s); an alert fires after {res['failureThreshold']} failures "
               f"of a kind within {res['cooldownMs'] // 1000} s. Delivered {res['delivered']}, failed "
               f"{res['failed']}.")
    out.table(["kind", "in window", "total", "fired", "last"],
              [[k, str(t["count"]), str(t["total"]), str(t["fired"]), out.one_line(t.get("lastDetail") or "-", 60)]
               for k, t in res["trackers"].items()])


@alerts_group.command("test")
@json_option
@pass_ctx
def alerts_test(c: Ctx) -> None:
    """Send a test alert to every alert webhook now."""
    res = c.call("alerts.test")
    if c.json:
        out.echo_json(res)
    elif res["sent"]:
        click.echo(f"Test alert delivered to {res['webhookCount']} webhook(s).")
    else:
        click.echo(res["message"])
        sys.exit(1)
