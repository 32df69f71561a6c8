"""Who the daemon takes you for, and single sign-on: login, logout, whoami."""

from __future__ import annotations

import os

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, fail, json_option, pass_ctx
from aegisctl.client import ClientError


def _server_url(c: Ctx) -> str:
    """The HTTP address of the daemon the CLI talks to: --url, else the one the daemon gives in its `hello`."""
    from aegisctl._conn import port_of

    if c.url:
        return c.url.rstrip("/")
    try:
        client = c.client()
        if client.url:
            return client.url.rstrip("/")
        return str(client.call("hello")["httpUrl"]).rstrip("/")
    except ClientError:
        return f"http://127.0.0.1:{port_of()}"


@click.command()
@click.option("--no-open", is_flag=True, help="Print the address instead of opening a browser.")
@json_option
@pass_ctx
def login(c: Ctx, no_open: bool) -> None:
    """Sign in with the organisation's identity provider (OAuth device flow; needs OIDC on the server)."""
    import httpx

    from aegisctl._login import LoginError, auth_file, device_login

    url = _server_url(c)

    def show(text: str) -> None:
        click.echo(text, err=c.json)
        if not no_open and os.environ.get("DISPLAY"):
            import webbrowser

            webbrowser.open(text.split()[1])
    try:
        with httpx.Client(timeout=30) as http:
            entry = device_login(http, url, show=show)
    except LoginError as exc:
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    if c.json:
        out.echo_json({"server": url, "expiresAt": entry["expires_at"], "file": str(auth_file())})
    else:
        click.echo(f"Signed in to {url}; the token is kept in {auth_file()} until it expires.")


@click.command()
@pass_ctx
def logout(c: Ctx) -> None:
    """Forget the token `ag login` saved for this server."""
    from aegisctl._login import forget

    url = _server_url(c)
    click.echo(f"Signed out of {url}." if forget(url) else f"Not signed in to {url}.")


@click.command()
@json_option
@pass_ctx
def whoami(c: Ctx) -> None:
    """Who the daemon takes you for: the local user (the socket, or zero-config loopback), a key, a single
    sign-on identity (`ag login`), or the agent of a session when run inside one."""
    import getpass

    client = c.client()
    res = client.call("auth.whoami")
    target = client.target
    if c.json:
        out.echo_json({**res, "server": target})
        return
    kind, role = res["kind"], res["role"]
    if kind == "agent":
        click.echo(f"the agent of session {res['sessionId']} on {target}")
        click.echo("  you run inside that session: you may read it, and create and drive sessions of your own; "
                   "never approve its prompts, send to it or end it, manage keys, or see other sessions")
        return
    if kind == "local":
        click.echo(f"{getpass.getuser()} ({role}) on {target}")
        how = "the control socket lets your user in" if client.url is None else \
            "loopback clients of the daemon's own user are let in"
        if not res["authRequired"]:
            click.echo(f"  the local user, zero-config: {how} without a token (this daemon has no token, API keys "
                       "or single sign-on)")
        elif client.url is None:
            click.echo(f"  the local user: {how} without a token; HTTP clients need one (AEGIS_AUTH_TOKEN, an API "
                       "key, or `ag login`)")
        if role != "admin":
            click.echo("  strictRbac is on: local callers are viewers")
        return
    line = f"{res['name']} ({role}) on {target}"
    if kind == "oidc" and client.url:
        from aegisctl._login import token_expiry

        left = token_expiry(client.url)
        if left is not None:
            line += f" (token expires in {max(0, int(left // 60))}m)"
    click.echo(line)
    if kind == "master":
        click.echo("  the master token (AEGIS_AUTH_TOKEN of the daemon)")
    elif kind == "key":
        click.echo(f"  API key {res['keyId']}" + (f", permissions {', '.join(res['permissions'])}"
                                                  if res.get("permissions") is not None else ""))
