"""The daemon itself: run it in the foreground (`serve`), stop it, serve MCP on stdio, and install it as a systemd user
service."""

from __future__ import annotations

import sys

import click

from aegisctl import _output as out
from aegisctl.cli._context import Ctx, fail, json_option, pass_ctx
from aegisctl.client import ConnectError


@click.command()
@click.option("--host", help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, help="HTTP port (default 9100).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--state-dir", help="State directory (default ~/.aegis).")
def serve(host: str | None = None, port: int | None = None, config_path: str | None = None,
          state_dir: str | None = None) -> None:
    """Run aegisd in the foreground (Ctrl-C stops it)."""
    from aegisd.app.main import run_foreground

    run_foreground(config_path=config_path, overrides={"host": host, "port": port, "stateDir": state_dir})


@click.command()
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds to wait until the daemon is gone (it ends its sessions' agents first).")
@click.option("--port", type=int, help="The daemon on this HTTP port (also AEGIS_PORT).")
@json_option
@pass_ctx
def stop(c: Ctx, timeout: float, port: int | None) -> None:
    """Stop the daemon the CLI talks to, and wait until it is gone.

    Under the systemd user unit (`ag service install`) through `systemctl --user stop aegisd`, else by asking the
    daemon (admins only; never a session's agent). Exit 1 when no daemon answers."""
    from aegisctl._background import is_local, wait_gone
    from aegisctl._service import stop_unit, unit_main_pid

    try:
        client = c.client(port)
        hello = client.call("hello")
    except ConnectError as exc:
        fail(f"no daemon running: {exc.message}")
    pid, where = int(hello["pid"]), hello.get("httpUrl") or client.target
    if is_local(client) and unit_main_pid() == pid:
        via = "systemd"
        if not c.json:
            click.echo(f"aegisd (pid {pid}) runs under the systemd user unit: systemctl --user stop aegisd", err=True)
        code = stop_unit()
        if code != 0:
            fail(f"`systemctl --user stop aegisd` failed (exit code {code}); see `ag service status`")
    else:
        via = "daemon.stop"
        answered = False
        try:  # one event, sent before the daemon starts stopping; then it closes the stream
            for _ev in client.stream("daemon.stop"):
                answered = True
        except ConnectError:
            if not answered:
                raise
    if not wait_gone(client, pid, timeout):
        fail(f"aegisd (pid {pid}) is still stopping after {timeout:g} s (it stops its sessions' agents first); "
             f"wait, or end it with `kill {pid}`")
    if c.json:
        out.echo_json({"stopped": True, "pid": pid, "httpUrl": where, "via": via})
    else:
        click.echo(f"Stopped aegisd (pid {pid}, {where}).")


@click.command()
@click.option("--port", type=int, help="The daemon on this HTTP port (also AEGIS_PORT; default: the socket).")
@click.pass_obj
def mcp(obj: Ctx, port: int | None) -> None:
    """Serve MCP on stdin/stdout, so an agent can drive sessions: `claude mcp add aegis -- ag mcp`.

    Talks to the running daemon (the socket, or --url / AEGIS_URL with AEGIS_AUTH_TOKEN); tools that need it
    report SERVER_UNREACHABLE until a daemon answers."""
    from aegisctl._conn import connect

    try:
        from aegisctl.mcp._server import serve as serve_mcp
    except ImportError as exc:
        fail(f"`ag mcp` needs the MCP Python SDK ({exc}): pip install 'aegis-py[mcp]'")
    sys.exit(serve_mcp(lambda: connect(socket_path=obj.socket, url=obj.url, port=port)))


@click.group("service")
def service_group() -> None:
    """Install aegisd as a systemd user service."""


@service_group.command("install")
@click.option("--dry-run", is_flag=True, help="Print the unit and the commands instead.")
def service_install(dry_run: bool) -> None:
    """Write ~/.config/systemd/user/aegisd.service and enable it."""
    from aegisctl._service import install

    sys.exit(install(dry_run=dry_run))


@service_group.command("uninstall")
def service_uninstall() -> None:
    """Disable and remove the user unit."""
    from aegisctl._service import uninstall

    sys.exit(uninstall())


@service_group.command("status")
def service_status() -> None:
    """Show the unit's status."""
    from aegisctl._service import status

    sys.exit(status())
