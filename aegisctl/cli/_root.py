"""The root of the command line: the `ag` group, its global options, and where each command lives.

The commands are grouped by topic, one module each; a module is imported only when one of its commands runs
(or help lists them all). `list`, the most frequent, has a module of its own, so `ag list` loads it and nothing
else (tests/test_cli_imports.py)."""

from __future__ import annotations

import gc
import importlib
import os
import sys
from typing import Any

import click

from aegisctl.cli._context import Ctx

# command name -> "module:attribute" under aegisctl.cli
COMMANDS = {
    # the daemon: run it, stop it, serve MCP, install it as a service
    "serve": "_daemon:serve", "stop": "_daemon:stop", "mcp": "_daemon:mcp", "service": "_daemon:service_group",
    # sessions
    "run": "_run:run",
    "list": "_list:list_", "create": "_sessions:create", "show": "_sessions:show", "send": "_sessions:send",
    "read": "_sessions:read", "interrupt": "_sessions:interrupt", "kill": "_sessions:kill",
    "close": "_sessions:close", "verify": "_sessions:verify", "screenshot": "_sessions:screenshot",
    # permission requests
    "approve": "_permissions:approve", "reject": "_permissions:reject",
    # the event stream
    "events": "_events:events",
    # setup
    "init": "_setup:init", "doctor": "_setup:doctor", "config": "_setup:config_group",
    # who you are, API keys
    "login": "_auth:login", "logout": "_auth:logout", "whoami": "_auth:whoami", "keys": "_keys:keys_group",
    # the nodes of the cluster
    "nodes": "_nodes:nodes_group",
    # notification channels and alerts
    "channels": "_notify:channels", "alerts": "_notify:alerts_group",
    # any operation of the registry
    "rpc": "_rpc:rpc",
}


class AegisGroup(click.Group):
    """`ag <unknown word>` is an error with a suggestion, never a session brief. Commands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name].split(":")
            cmd = getattr(importlib.import_module(f"aegisctl.cli.{module}"), attr)
            self.add_command(cmd, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.5)
            hint = f" Did you mean `ag {close[0]}`?" if close else ""
            raise click.UsageError(f"unknown command {name!r}.{hint} (`ag --help` lists the commands; to give "
                                   "an agent a task use `ag run \"<prompt>\"`)", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=AegisGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--socket", "socket_path", envvar="AEGIS_SOCKET", help="Control socket of the daemon.")
@click.option("--url", envvar="AEGIS_URL", help="Talk HTTP to this daemon (with AEGIS_AUTH_TOKEN) instead.")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
@click.version_option(None, "-v", "--version", package_name="aegis-py", prog_name="ag")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, url: str | None, json_out: bool) -> None:
    """Aegis: supervise coding-agent sessions. With no command, runs the server in the foreground.

    \b
    Which daemon the commands talk to:
      --url / AEGIS_URL   that daemon, over HTTP (AEGIS_AUTH_TOKEN, or the token of `ag login`);
      AEGIS_PORT          the daemon on that port of this machine (also --port of run, stop, mcp),
                          through its socket when this user can reach it;
      otherwise           the control socket (--socket / AEGIS_SOCKET, default ~/.aegis/aegisd.sock)."""
    ctx.obj = Ctx(socket_path, url, json_out)
    if ctx.invoked_subcommand is None:
        serve = cli.get_command(ctx, "serve")
        assert serve is not None
        ctx.invoke(serve)


def main() -> None:
    # What is loaded by now (click, this group) lives as long as the process: moved out of the cyclic collector's
    # sight, the collection at exit no longer walks it (19 M instructions of `ag list`'s 245 M).
    gc.freeze()
    try:
        cli.main(prog_name=os.path.basename(sys.argv[0]) or "ag")
    except KeyboardInterrupt:
        sys.exit(130)
