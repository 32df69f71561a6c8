"""API keys (admin): create, list, revoke, rotate, and their quotas."""

from __future__ import annotations

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, json_option, pass_ctx


@click.group("keys")
def keys_group() -> None:
    """Manage API keys (admin)."""


@keys_group.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "operator", "viewer"]), default="viewer", show_default=True)
@click.option("--permission", "permissions", multiple=True,
              type=click.Choice(["create", "send", "approve", "reject", "kill", "audit"]),
              help="Override the role's permissions (repeatable).")
@click.option("--ttl-days", type=int, help="Expire after this many days.")
@click.option("--rate-limit", type=int, help="Requests per minute (default 100).")
@json_option
@pass_ctx
def keys_create(c: Ctx, name: str, role: str, permissions: tuple[str, ...], ttl_days: int | None,
                rate_limit: int | None) -> None:
    """Create a key; its secret is printed once."""
    res = c.call("auth.keys.create", name=name, role=role, permissions=list(permissions) or None,
                 ttlDays=ttl_days, rateLimit=rate_limit)
    if c.json:
        out.echo_json(res)
        return
    click.echo(f"Created key {res['id']} ({res['name']}, {res['role']}).")
    click.echo(f"Secret (shown once): {res['key']}")


@keys_group.command("list")
@json_option
@pass_ctx
def keys_list(c: Ctx) -> None:
    """List keys (never their secrets)."""
    res = c.call("auth.keys.list")
    if c.json:
        out.echo_json(res)
        return
    if not res:
        click.echo("No API keys (localhost zero-config: loopback clients need none).")
        return
    out.table(["id", "name", "role", "created", "last used", "expires"],
              [[k["id"], k["name"], k["role"], out.age(k["createdAt"]), out.age(k.get("lastUsedAt")),
                str(k.get("expiresAt") or "-")] for k in res])


@keys_group.command("revoke")
@click.argument("key_id")
@json_option
@pass_ctx
def keys_revoke(c: Ctx, key_id: str) -> None:
    """Revoke a key at once."""
    res = c.call("auth.keys.revoke", id=key_id)
    out.echo_json(res) if c.json else click.echo(f"Revoked {key_id}.")


@keys_group.command("rotate")
@click.argument("key_id")
@click.option("--grace", "grace", type=int, default=3600, show_default=True,
              help="Seconds the old secret keeps working (0: it stops now).")
@json_option
@pass_ctx
def keys_rotate(c: Ctx, key_id: str, grace: int) -> None:
    """Give a key a new secret; the old one works for the grace period."""
    res = c.call("auth.keys.rotate", id=key_id, gracePeriodSeconds=grace)
    if c.json:
        out.echo_json(res)
        return
    click.echo(f"Rotated {key_id}. New secret (shown once): {res['key']}")
    if grace:
        click.echo(f"The old secret works for {grace} s more.")


@keys_group.command("quota")
@click.argument("key_id")
@click.option("--max-sessions", type=click.IntRange(min=0), help="Sessions the key may run at once (0: no limit).")
@click.option("--max-tokens", type=click.IntRange(min=0), help="Tokens per window (0: no limit).")
@click.option("--max-spend", type=click.FloatRange(min=0), help="Estimated USD per window (0: no limit).")
@click.option("--window", "window_min", type=click.IntRange(min=1, max=43_200),
              help="The window, in minutes (default 60).")
@click.option("--clear", is_flag=True, help="Remove every quota of the key.")
@json_option
@pass_ctx
def keys_quota(c: Ctx, key_id: str, max_sessions: int | None, max_tokens: int | None, max_spend: float | None,
               window_min: int | None, clear: bool) -> None:
    """Show or set a key's quotas. With no option, show them and what the key uses now."""
    res = c.call("auth.keys.quotas.get", id=key_id)
    given = {"maxConcurrentSessions": max_sessions, "maxTokensPerWindow": max_tokens,
             "maxSpendPerWindow": max_spend,
             "quotaWindowMs": window_min * 60_000 if window_min is not None else None}
    if clear or any(v is not None for v in given.values()):
        # the whole new set is sent with clear, so that 0 can remove one quota (the client drops nulls)
        merged = {} if clear else dict(res["quotas"] or {})
        for name, value in given.items():
            if value == 0:
                merged.pop(name, None)
            elif value is not None:
                merged[name] = value
        c.call("auth.keys.quotas.set", id=key_id, clear=True, **merged)
        res = c.call("auth.keys.quotas.get", id=key_id)
    if c.json:
        out.echo_json(res)
        return
    q, use = res["quotas"] or {}, res["usage"]
    window = f"{use['windowMs'] // 60_000} min"
    rows = [["sessions at once", str(q.get("maxConcurrentSessions", "-")), str(use["activeSessions"])],
            [f"tokens per {window}", str(q.get("maxTokensPerWindow", "-")), str(use["tokensInWindow"])],
            [f"USD per {window}", str(q.get("maxSpendPerWindow", "-")), f"{use['spendInWindowUsd']:.4f}"]]
    if not q:
        click.echo(f"Key {key_id} has no quotas (only its request rate limit).")
    out.table(["quota", "limit", "used now"], rows)
