"""`ag run`: server, session, streamed output and the project's config in one command."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from aegisctl import _output as out
from aegisctl.cli._context import EXIT_USAGE, Ctx, fail, pass_ctx
from aegisctl.cli._sessions import REUSE_HELP, check_prompt, create_params, fail_start, next_steps, say_created
from aegisctl.cli._turn import stream_turn
from aegisctl.client import Client, ClientError, ConnectError


@click.command()
@click.argument("prompt")
@click.option("--cwd", default=".", show_default=True, help="Working directory (default: current directory).")
@click.option("--port", type=int,
              help="The daemon on this HTTP port (also AEGIS_PORT); one is started there when none answers.")
@click.option("--no-stream", is_flag=True, help="Don't stream: print the session id and next steps instead.")
@click.option("--model", help="Model for this session (default: `model` of the project's .aegis/config.yaml).")
@click.option("--name", help="Display name for the session (default: `name` of the project's .aegis/config.yaml).")
@click.option("--agent", help="Agent to run (default: claude).")
@click.option("--yes", "quiet", is_flag=True, help="No status messages (for CI and scripts).")
@click.option("--accept-permissions", "-y", "accept", is_flag=True,
              help="Auto-approve every permission prompt (permissionMode bypassPermissions).")
@click.option("--keep", is_flag=True, help="Keep the session open after the turn.")
@click.option("--reuse", is_flag=True, help=REUSE_HELP)
@pass_ctx
def run(c: Ctx, prompt: str, cwd: str, port: int | None, no_stream: bool, model: str | None, name: str | None,
        agent: str | None, quiet: bool, accept: bool, keep: bool, reuse: bool) -> None:
    """Do everything in one command: server, session, streamed output, and the project's config.

    Starts aegisd in the background when none answers (on --port / AEGIS_PORT when given). Writes
    <cwd>/.aegis/config.yaml if it is missing, with the port of the daemon used, once that daemon has accepted
    the directory. Exits 0 when the turn ends, 1 with the reason and its fix when the agent fails or refuses the
    prompt (not signed in, rate-limited, unknown model, not installed), 2 when PROMPT is empty."""
    from aegisctl._background import start_background
    from aegisctl._conn import requested_port
    from aegisctl._init import bootstrap_config

    def status(msg: str) -> None:
        if not quiet:
            click.echo(out.style(msg, dim=True), err=True)

    check_prompt(prompt, 'ag run "Analyze this project and list the main technologies."')
    work = Path(cwd).expanduser().absolute()
    if not work.is_dir():
        fail(f"--cwd {work} is not a directory", EXIT_USAGE)
    hello: dict[str, Any] | None = None
    try:
        c.client(port)
    except ConnectError:
        if c.url:
            raise
        wanted = requested_port(port)
        if wanted is not None:
            _refuse_second_daemon(c, wanted)
        status("Starting aegisd in the background…" if wanted is None else
               f"Starting aegisd in the background on port {wanted}…")
        hello = start_background(port=wanted)
        status(f"aegisd {hello['version']} on {hello['httpUrl']} (pid {hello['pid']})")
        c._client = None
        c.client(port)
    mode = "bypassPermissions" if accept else None
    s = c.call("session.create", **create_params(str(work), prompt, name, model, agent, mode, reuse))
    # only now, the workDir accepted: the project's config, with the port of the daemon that serves it
    created = bootstrap_config(work, port=_port_of_url((hello or c.call("hello")).get("httpUrl")))
    if created:
        status(f"Created {created}")
    if s["status"] == "crashed":
        fail_start(s)
    if no_stream:
        say_created(s)
        next_steps(s, c.call("hello").get("httpUrl"))
        return
    if s.get("reused"):
        status(f"Reusing idle session {out.short_id(s['id'])} ({s['name']}, {s['agent']}) in {s['workDir']}")
    else:
        status(f"Session {out.short_id(s['id'])} ({s['agent']}) in {s['workDir']}")
    # SIGINT must reach us as KeyboardInterrupt even if a parent ignored it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # a reused session has older turns: follow only the events after this prompt was given
    after = int((s.get("promptDelivery") or {}).get("afterEventId") or 0) if s.get("reused") else 0
    code = stream_turn(c, s["id"], interactive=sys.stdin.isatty() and not accept, accept=accept, quiet=quiet,
                       after=after)
    if not keep:
        try:
            c.call("session.close", id=s["id"])
        except ClientError:
            pass
    elif not quiet:
        status(f"Session kept: ag send {out.short_id(s['id'])} \"<text>\"")
    sys.exit(code)


def _port_of_url(url: str | None) -> int:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url or "").port or 9100
    except ValueError:
        return 9100


def _refuse_second_daemon(c: Ctx, port: int) -> None:
    """Nothing answers on the port asked for. A daemon on the default socket owns the state directory, and one
    state directory serves one daemon: starting another would fail, so say what to do instead."""
    from aegisctl.client import default_socket_path

    try:
        with Client(socket_path=c.socket or default_socket_path()) as other:
            hello = other.call("hello")
    except ClientError:
        return
    fail(f"nothing answers on port {port}, and aegisd (pid {hello['pid']}) already runs on "
         f"{hello.get('httpUrl')} with the state directory {hello.get('stateDir')}; a state directory serves one "
         "daemon. Use that one (leave out --port / AEGIS_PORT), stop it first (`ag stop`), or start a second one "
         "with its own AEGIS_STATE_DIR.")
