"""aegisctl / ag / aegis: the command line of Aegis.

Talks to aegisd over the control socket (or HTTP /v1/rpc with --url). Imports stay light: click and the
stdlib client; the daemon's modules load only for the commands that need them (serve, init, doctor, config)."""

from __future__ import annotations

import difflib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from aegisctl import _output as out
from aegisctl.client import Client, ClientError, ConnectError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class Ctx:
    def __init__(self, socket: str | None, url: str | None, json_out: bool) -> None:
        self.socket = socket
        self.url = url
        self.json = json_out
        self._client: Client | None = None

    def client(self, port: int | None = None) -> Client:
        if self._client is None:
            from aegisctl._conn import connect

            self._client = connect(socket_path=self.socket, url=self.url, port=port)
        return self._client

    def call(self, op: str, **params: Any) -> Any:
        return self.client().call(op, **params)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def explain(exc: ClientError) -> NoReturn:
    if isinstance(exc, ConnectError):
        fail(f"{exc.message}\n  start it with `ag serve` (foreground) or `ag run \"<prompt>\"` (starts it in the "
             "background); set AEGIS_SOCKET or --url if it runs elsewhere")
    if exc.status == 401:
        fail(f"{exc.message}\n  set AEGIS_AUTH_TOKEN to the daemon's token (or an API key), or sign in with "
             "`ag login` where single sign-on is set up")
    if exc.status == 403:
        fail(f"{exc.message}\n  your token's role does not allow this")
    if exc.code == "VALIDATION_ERROR":  # the daemon's message says what to give instead: as is
        fail(exc.message)
    fail(f"{exc.message} ({exc.code})")


class AegisGroup(click.Group):
    """`ag <unknown word>` is an error with a suggestion, never a session brief."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
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
        ctx.invoke(serve)


def pass_ctx(fn: Any) -> Any:
    """Pass the Ctx and turn client errors into one-line messages with the right exit code."""
    import functools

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: Ctx, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(obj, *args, **kwargs)
        except ClientError as exc:
            explain(exc)
    return wrapper


def json_option(fn: Any) -> Any:
    def set_json(ctx: click.Context, _param: Any, value: bool) -> None:
        if value:
            ctx.find_object(Ctx).json = True  # type: ignore[union-attr]
    return click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=set_json,
                        help="Machine-readable output.")(fn)


# ---- server ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, help="HTTP port (default 9100).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--state-dir", help="State directory (default ~/.aegis).")
def serve(host: str | None = None, port: int | None = None, config_path: str | None = None,
          state_dir: str | None = None) -> None:
    """Run aegisd in the foreground (Ctrl-C stops it)."""
    from aegisd.app.main import run_foreground

    run_foreground(config_path=config_path, overrides={"host": host, "port": port, "stateDir": state_dir})


@cli.command()
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds to wait until the daemon is gone (it ends its sessions' agents first).")
@click.option("--port", type=int, help="The daemon on this HTTP port (also AEGIS_PORT).")
@json_option
@pass_ctx
def stop(c: Ctx, timeout: float, port: int | None) -> None:
    """Stop the daemon the CLI talks to, and wait until it is gone.

    Under the systemd user unit (`ag service install`) through `systemctl --user stop aegisd`, else by asking the
    daemon (admins only; never a session's agent). Exit 1 when no daemon answers."""
    from aegisctl._conn import is_local, wait_gone
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


@cli.command()
@click.option("--port", type=int, help="The daemon on this HTTP port (also AEGIS_PORT; default: the socket).")
@click.pass_obj
def mcp(obj: Ctx, port: int | None) -> None:
    """Serve MCP on stdin/stdout, so an agent can drive sessions: `claude mcp add aegis -- ag mcp`.

    Talks to the running daemon (the socket, or --url / AEGIS_URL with AEGIS_AUTH_TOKEN); tools that need it
    report SERVER_UNREACHABLE until a daemon answers."""
    from aegisctl._conn import connect
    from aegisctl._mcp import serve as serve_mcp

    sys.exit(serve_mcp(lambda: connect(socket_path=obj.socket, url=obj.url, port=port)))


# ---- sessions -------------------------------------------------------------------------------------------
_REUSE_HELP = ("Reuse an idle session of the same workDir and agent (and model) when there is one, instead of "
               "starting a new agent. Without it the CLI always starts a new session (the API reuses by default).")


def _short(sid: str) -> str:
    return sid[:8]


def _next_steps(s: dict[str, Any], base_url: str | None) -> None:
    sid, short = s["id"], _short(s["id"])
    base = (base_url or "http://127.0.0.1:9100").rstrip("/")
    auth = ' -H "Authorization: Bearer $AEGIS_AUTH_TOKEN"' if os.environ.get("AEGIS_AUTH_TOKEN") else ""
    click.echo("Next steps:")
    click.echo(f"  Follow:   ag read {short} --follow")
    click.echo(f"  Send:     ag send {short} \"<text>\"")
    click.echo(f"  Approve:  ag approve {short}          (when it asks for permission)")
    click.echo(f"  Kill:     ag kill {short}")
    click.echo(f"  Status:   curl{auth} {base}/v1/sessions/{sid}/health")
    click.echo(f"  Read:     curl{auth} {base}/v1/sessions/{sid}/read")


def _create_params(cwd: str, prompt: str | None, name: str | None, model: str | None, agent: str | None,
                   mode: str | None, reuse: bool = False) -> dict[str, Any]:
    """session.create's params. Unlike the API, the CLI reuses an idle session only when asked (--reuse); the
    project's .aegis/config.yaml gives the default name and model (`ag init --name/--model`)."""
    from aegisctl._init import project_defaults

    work = Path(cwd).expanduser().absolute()
    defaults = project_defaults(work)
    return {"workDir": str(work), "prompt": prompt, "name": name or defaults.get("name"),
            "model": model or defaults.get("model"), "agent": agent, "permissionMode": mode, "reuse": reuse}


def _check_prompt(prompt: str | None, example: str) -> None:
    """An empty or blank prompt is a usage error: the agent would get nothing to do (and `ag run` would wait for
    a turn that never comes)."""
    if prompt is not None and not prompt.strip():
        fail(f"the prompt is empty: tell the agent what to do, e.g. {example}", EXIT_USAGE)


def _failure_lines(s: dict[str, Any]) -> list[str]:
    """Why a session failed, for people: the crash reason, then lastError (one line with the fix)."""
    lines = []
    crash = s.get("crash") or {}
    if crash.get("reason"):
        lines.append(str(crash["reason"]))
    last = (s.get("lastError") or {}).get("message")
    if last and last not in lines:
        lines.append(str(last))
    return lines


def _fail_start(s: dict[str, Any]) -> NoReturn:
    lines = _failure_lines(s) or ["unknown reason"]
    fail("the agent failed to start: " + "\n  ".join(lines))


def _say_created(s: dict[str, Any]) -> None:
    if s.get("reused"):
        click.echo(f"Reused idle session: {s['name']} (its agent was waiting in {s['workDir']}; --reuse)")
    else:
        click.echo(f"Session created: {s['name']}")
    click.echo(f"ID: {s['id']}")


@cli.command()
@click.argument("prompt", required=False)
@click.option("--cwd", default=".", show_default=True, help="Working directory of the session.")
@click.option("--name", help="Display name.")
@click.option("--model", help="Model for this session.")
@click.option("--agent", help="Agent to run (default: the configured default, claude).")
@click.option("--permission-mode", type=click.Choice(["default", "plan", "acceptEdits", "bypassPermissions",
                                                      "dontAsk", "auto"]))
@click.option("--reuse", is_flag=True, help=_REUSE_HELP)
@json_option
@pass_ctx
def create(c: Ctx, prompt: str | None, cwd: str, name: str | None, model: str | None, agent: str | None,
           permission_mode: str | None, reuse: bool) -> None:
    """Create a session (optionally with a first prompt) and print its id.

    Without PROMPT the session waits for `ag send`; an empty or blank PROMPT is a usage error. The name and
    model default to `name`/`model` of the project's .aegis/config.yaml (`ag init --name/--model`)."""
    _check_prompt(prompt, f'ag create "List the main technologies." --cwd {cwd}')
    s = c.call("session.create", **_create_params(cwd, prompt, name, model, agent, permission_mode, reuse))
    if c.json:
        out.echo_json(s)
        if s["status"] == "crashed":
            sys.exit(EXIT_ERROR)
        return
    _say_created(s)
    if s["status"] == "crashed":
        _fail_start(s)
    hello = c.call("hello")
    _next_steps(s, hello.get("httpUrl"))


@cli.command("list")
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
              [[_short(s["id"]), s["name"], out.status_text(s["status"]), s["agent"], s["workDir"],
                out.age(s["createdAt"])] for s in sessions])
    p = res["pagination"]
    if p["totalPages"] > 1:
        click.echo(f"page {p['page']}/{p['totalPages']} ({p['total']} sessions)")


@cli.command()
@click.argument("session_id")
@json_option
@pass_ctx
def show(c: Ctx, session_id: str) -> None:
    """Show one session."""
    s = c.call("session.get", id=session_id)
    if c.json:
        out.echo_json(s)
        return
    for key in ("id", "name", "status", "agent", "workDir", "permissionMode", "model", "requestedModel", "turns",
                "transcriptCount", "pid", "endReason"):
        if key == "requestedModel" and s.get(key) == s.get("model"):
            continue  # the agent reports the model asked for
        if s.get(key) not in (None, ""):
            val = out.status_text(s[key]) if key == "status" else s[key]
            click.echo(f"{key:>16}: {val}")
    if s.get("models"):
        click.echo(f"{'models offered':>16}: {', '.join(s['models'])}")
    click.echo(f"{'created':>16}: {out.age(s['createdAt'])} ago")
    if s.get("lastError"):
        err = s["lastError"]
        click.echo(f"{'last error':>16}: {out.style(err['message'], fg='red')} ({err['kind']}, "
                   f"{out.age(err.get('at'))} ago)")
    if s.get("pendingPermission"):
        p = s["pendingPermission"]
        click.echo(f"{'waiting for':>16}: {p['toolTitle']} {out.one_line(p.get('rawInput'))}")
        click.echo(f"{'request':>16}: {p['requestId']}  (ag approve {_short(s['id'])} --request {p['requestId']})")
    if s.get("crash"):
        click.echo(f"{'crash':>16}: {s['crash'].get('reason')}")
        if s["crash"].get("stderrTail"):
            click.echo("agent stderr (tail):")
            click.echo(s["crash"]["stderrTail"].rstrip())


@cli.command()
@click.argument("session_id")
@click.argument("text")
@json_option
@pass_ctx
def send(c: Ctx, session_id: str, text: str) -> None:
    """Send a prompt (queued if a turn is running)."""
    res = c.call("session.send", id=session_id, text=text)
    if c.json:
        out.echo_json(res)
    else:
        click.echo("Delivered." if res.get("delivered") else f"Queued (position {res.get('queuePosition', '?')}).")


def _print_entry(m: dict[str, Any]) -> None:
    role, ctype, text = m["role"], m["contentType"], m["text"]
    if ctype == "text":
        prefix = {"user": out.style("> ", fg="blue", bold=True), "assistant": ""}.get(role, "")
        click.echo(prefix + text)
    elif ctype == "thinking":
        click.echo(out.style(text, dim=True))
    elif ctype in ("tool_use", "tool_result", "tool_error", "permission_request", "permission_decision",
                   "plan", "error"):
        click.echo(out.style(f"[{ctype}] {out.one_line(text, 160)}", fg="red" if "error" in ctype else "cyan"))


@cli.command()
@click.argument("session_id")
@click.option("--follow", "-f", is_flag=True, help="Stream until the current turn ends.")
@click.option("--all", "everything", is_flag=True, help="The whole transcript, not only what is new.")
@json_option
@pass_ctx
def read(c: Ctx, session_id: str, follow: bool, everything: bool) -> None:
    """Print transcript entries new since the last read (--follow streams the turn)."""
    if everything:
        page, msgs = 1, []
        while True:
            res = c.call("session.transcript", id=session_id, page=page, limit=200)
            msgs += res["messages"]
            if not res["hasMore"]:
                break
            page += 1
        res = {"messages": msgs}
    else:
        res = c.call("session.read", id=session_id)
    if c.json and not follow:
        out.echo_json(res)
        return
    for m in res["messages"]:
        _print_entry(m) if not c.json else out.echo_json(m)
    if follow:
        code = _stream_turn(c, session_id, interactive=sys.stdin.isatty(), accept=False, quiet=False)
        sys.exit(code)


def _decide(c: Ctx, op: str, session_id: str, option: str | None, request: str | None) -> None:
    res = c.call(op, id=session_id, optionId=option, requestId=request)
    if c.json:
        out.echo_json(res)
    else:
        click.echo(f"{'Approved' if op == 'session.approve' else 'Rejected'} ({res['optionId']}): request "
                   f"{res['requestId']}.")


_REQUEST_HELP = ("Decide only this request (its requestId, as `ag show` or the notification gave it); if another "
                 "one is pending, nothing is decided (exit 1, PERMISSION_REQUEST_MISMATCH).")


@cli.command()
@click.argument("session_id")
@click.option("--option", help="Pick this option id instead of the least-privilege allow option.")
@click.option("--request", "request", metavar="REQUEST_ID", help=_REQUEST_HELP)
@json_option
@pass_ctx
def approve(c: Ctx, session_id: str, option: str | None, request: str | None) -> None:
    """Approve the pending permission request."""
    _decide(c, "session.approve", session_id, option, request)


@cli.command()
@click.argument("session_id")
@click.option("--option", help="Pick this option id instead of reject_once.")
@click.option("--request", "request", metavar="REQUEST_ID", help=_REQUEST_HELP)
@json_option
@pass_ctx
def reject(c: Ctx, session_id: str, option: str | None, request: str | None) -> None:
    """Reject the pending permission request."""
    _decide(c, "session.reject", session_id, option, request)


def _simple(op: str, done: str) -> Any:
    @click.argument("session_id")
    @json_option
    @pass_ctx
    def command(c: Ctx, session_id: str) -> None:
        res = c.call(op, id=session_id)
        out.echo_json(res) if c.json else click.echo(done if res.get("interrupted", True) else "Nothing to interrupt.")
    return command


cli.command("interrupt", help="Cancel the current turn.")(_simple("session.interrupt", "Interrupted."))
cli.command("kill", help="Kill a session (status killed).")(_simple("session.kill", "Killed."))
cli.command("close", help="Close a session normally (status completed).")(_simple("session.close", "Closed."))


@cli.command()
@click.argument("session_id")
@click.option("--critical-only", is_flag=True, help="Type check and build only, no tests.")
@json_option
@pass_ctx
def verify(c: Ctx, session_id: str, critical_only: bool) -> None:
    """Run the project's checks (type check, build, tests) in the session's workDir; exit 1 if one fails."""
    try:
        res = c.call("session.verify", id=session_id, criticalOnly=critical_only or None)
    except ClientError as exc:
        if exc.code != "VERIFICATION_FAILED" or not isinstance(exc.details, dict):
            raise
        res = exc.details
    if c.json:
        out.echo_json(res)
    else:
        out.table(["step", "result", "time", "command"],
                  [[s["name"], out.style("ok", fg="green") if s["ok"] else out.style(s.get("error") or "failed",
                                                                                     fg="red"),
                    f"{s['durationMs'] / 1000:.1f} s", s["command"]] for s in res["steps"]])
        for s in res["steps"]:
            if not s["ok"] and s.get("output"):
                click.echo(f"\n--- {s['name']}: last lines of output ---")
                click.echo("\n".join(s["output"].rstrip().splitlines()[-20:]))
        click.echo(("\n" if res["steps"] else "") + res["summary"])
    if not res["ok"]:
        sys.exit(1)


@cli.command()
@click.argument("session_id")
@click.argument("url")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, writable=True), default="screenshot.png",
              show_default=True, help="Where to write the PNG.")
@click.option("--width", type=click.IntRange(1, 7680), default=1280, show_default=True)
@click.option("--height", type=click.IntRange(1, 4320), default=720, show_default=True)
@click.option("--full-page", is_flag=True, help="The whole page, not just the viewport.")
@pass_ctx
def screenshot(c: Ctx, session_id: str, url: str, output: str, width: int, height: int, full_page: bool) -> None:
    """Take a PNG screenshot of URL (say, the session's dev server) in headless Chromium."""
    import base64

    res = c.call("session.screenshot", id=session_id, url=url, width=width, height=height,
                 fullPage=full_page or None)
    Path(output).write_bytes(base64.b64decode(res["screenshot"]))
    click.echo(f"Wrote {output} ({res['width']}x{res['height']}).")
    if res.get("loadError"):
        click.echo(f"warning: the page did not load ({res['loadError']}); that is what it shows", err=True)
    for blocked in res.get("blockedRequests") or []:
        click.echo(f"blocked: {blocked}", err=True)


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


@cli.command()
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


@cli.command()
@pass_ctx
def logout(c: Ctx) -> None:
    """Forget the token `ag login` saved for this server."""
    from aegisctl._login import forget

    url = _server_url(c)
    click.echo(f"Signed out of {url}." if forget(url) else f"Not signed in to {url}.")


@cli.command()
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


@cli.command()
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


@cli.group("alerts")
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


@cli.command()
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
                click.echo(f"{ev['id']:>8} {_short(ev['sessionId'])} {ev['event']:<8} {out.one_line(detail, 80)}")
    except KeyboardInterrupt:
        sys.exit(130)


# ---- the turn stream (run, read --follow) -------------------------------------------------------------
def _ask(prompt: str) -> bool:
    try:
        answer = click.prompt(prompt, default="N", show_default=False, err=True)
    except (click.Abort, EOFError):
        return False
    return answer.strip().lower() in ("y", "yes")


def _stream_turn(c: Ctx, sid: str, *, interactive: bool, accept: bool, quiet: bool,
                 after: int | None = None) -> int:
    """Stream a session's turn to the terminal. Returns the exit code. Ctrl-C once interrupts the turn,
    twice kills the session."""
    last_id = after
    interrupts = 0
    stop_reason: str | None = None
    turn_error: str | None = None
    mid_line = False
    while True:
        stream: Iterator[dict[str, Any]] = c.client().stream("session.follow", id=sid, untilIdle=True,
                                                           afterId=last_id)
        try:
            for ev in stream:
                last_id = ev["id"]
                kind, data = ev["event"], ev.get("data") or {}
                if kind == "chunk" and data.get("contentType") == "text":
                    click.echo(data["text"], nl=False)
                    mid_line = not data["text"].endswith("\n")
                elif kind == "message" and data.get("contentType") in ("tool_use", "tool_result", "tool_error"):
                    if mid_line:
                        click.echo()
                        mid_line = False
                    if data["contentType"] == "tool_use":
                        click.echo(out.style(f"⏺ {out.one_line(data['text'], 120)}", fg="cyan"), err=True)
                    elif data["contentType"] == "tool_error":
                        click.echo(out.style(f"  ✗ {out.one_line(data['text'], 120)}", fg="red"), err=True)
                    elif not quiet:
                        click.echo(out.style(f"  ⎿ {out.one_line(data['text'], 120)}", dim=True), err=True)
                elif kind == "permission.requested":
                    if mid_line:
                        click.echo()
                        mid_line = False
                    desc = f"{data['toolTitle']} {out.one_line(data.get('rawInput'), 160)}"
                    req = str(data["requestId"])
                    if interactive:
                        ok = _ask(out.style(f"Allow {desc}? [y/N]", fg="yellow", bold=True))
                        try:  # this very request: if it was decided elsewhere meanwhile, nothing else is
                            c.call("session.approve" if ok else "session.reject", id=sid, requestId=req)
                        except ClientError as exc:
                            if exc.code not in ("NO_PENDING_PERMISSION", "PERMISSION_REQUEST_MISMATCH"):
                                raise
                            click.echo(out.style("  (already decided elsewhere: your answer was not applied)",
                                                 dim=True), err=True)
                    else:
                        click.echo(f"Permission requested: {desc}\n  approve: ag approve {_short(sid)} --request {req}"
                                   f"   reject: ag reject {_short(sid)} --request {req}", err=True)
                elif kind == "turn":
                    stop_reason = data.get("stopReason")
                    turn_error = data.get("error")
                elif kind == "ended":
                    if mid_line:
                        click.echo()
                    s = c.call("session.get", id=sid)
                    lines = _failure_lines(s) or [str(data.get("reason"))]
                    click.echo(f"error: session {data.get('status')}: " + "\n  ".join(lines), err=True)
                    return EXIT_ERROR
            break
        except KeyboardInterrupt:
            if mid_line:
                click.echo()
                mid_line = False
            interrupts += 1
            if interrupts == 1:
                try:
                    click.echo("Interrupting the turn (Ctrl-C again kills the session)…", err=True)
                    c.call("session.interrupt", id=sid)
                    continue
                except KeyboardInterrupt:  # the second press came while the first was being handled
                    interrupts += 1
            _kill_quietly(c, sid)
            return 130
    if mid_line:
        click.echo()
    if stop_reason in (None, "end_turn"):
        return EXIT_OK if interrupts == 0 else 130
    if stop_reason == "error":  # the agent refused the prompt: why, and the fix (the session's lastError)
        if turn_error is None:
            turn_error = (c.call("session.get", id=sid).get("lastError") or {}).get("message")
        click.echo(f"error: {turn_error or 'the agent ended the turn with an error and gave no reason'}", err=True)
        return EXIT_ERROR
    click.echo(f"turn ended: {stop_reason}", err=True)
    return 130 if stop_reason == "cancelled" else EXIT_ERROR


def _kill_quietly(c: Ctx, sid: str) -> None:
    """Kill the session; further Ctrl-C presses are ignored until it is done."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        click.echo("Killing the session…", err=True)
        c.call("session.kill", id=sid)
    except ClientError:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)


@cli.command()
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
@click.option("--reuse", is_flag=True, help=_REUSE_HELP)
@pass_ctx
def run(c: Ctx, prompt: str, cwd: str, port: int | None, no_stream: bool, model: str | None, name: str | None,
        agent: str | None, quiet: bool, accept: bool, keep: bool, reuse: bool) -> None:
    """Do everything in one command: server, session, streamed output, and the project's config.

    Starts aegisd in the background when none answers (on --port / AEGIS_PORT when given). Writes
    <cwd>/.aegis/config.yaml if it is missing, with the port of the daemon used, once that daemon has accepted
    the directory. Exits 0 when the turn ends, 1 with the reason and its fix when the agent fails or refuses the
    prompt (not signed in, rate-limited, unknown model, not installed), 2 when PROMPT is empty."""
    from aegisctl._conn import requested_port, start_background
    from aegisctl._init import bootstrap_config

    def status(msg: str) -> None:
        if not quiet:
            click.echo(out.style(msg, dim=True), err=True)

    _check_prompt(prompt, 'ag run "Analyze this project and list the main technologies."')
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
    s = c.call("session.create", **_create_params(str(work), prompt, name, model, agent, mode, reuse))
    # only now, the workDir accepted: the project's config, with the port of the daemon that serves it
    created = bootstrap_config(work, port=_port_of_url((hello or c.call("hello")).get("httpUrl")))
    if created:
        status(f"Created {created}")
    if s["status"] == "crashed":
        _fail_start(s)
    if no_stream:
        _say_created(s)
        _next_steps(s, c.call("hello").get("httpUrl"))
        return
    if s.get("reused"):
        status(f"Reusing idle session {_short(s['id'])} ({s['name']}, {s['agent']}) in {s['workDir']}")
    else:
        status(f"Session {_short(s['id'])} ({s['agent']}) in {s['workDir']}")
    # SIGINT must reach us as KeyboardInterrupt even if a parent ignored it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # a reused session has older turns: follow only the events after this prompt was given
    after = int((s.get("promptDelivery") or {}).get("afterEventId") or 0) if s.get("reused") else 0
    code = _stream_turn(c, s["id"], interactive=sys.stdin.isatty() and not accept, accept=accept, quiet=quiet,
                        after=after)
    if not keep:
        try:
            c.call("session.close", id=s["id"])
        except ClientError:
            pass
    elif not quiet:
        status(f"Session kept: ag send {_short(s['id'])} \"<text>\"")
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


# ---- setup ------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--cwd", default=".", help="Project directory (the config goes to <cwd>/.aegis/config.yaml).")
@click.option("--model", help="Model of the sessions `ag run` and `ag create` start here (written as `model:`).")
@click.option("--name", help="Name of the sessions `ag run` and `ag create` start here without --name (written as "
              "`name:`).")
@click.option("--host", help="Bind address; a non-loopback host gets an auth token.")
@click.option("--port", type=int, help="HTTP port.")
@click.option("--force", is_flag=True, help="Replace an existing config (and its token).")
@json_option
@pass_ctx
def init(c: Ctx, cwd: str, model: str | None, name: str | None, host: str | None, port: int | None,
         force: bool) -> None:
    """Write .aegis/config.yaml (zero-config on localhost: no token)."""
    from aegisctl._init import write_config

    path, token = write_config(Path(cwd).expanduser().absolute(), model=model, name=name, host=host, port=port,
                               force=force)
    if c.json:
        out.echo_json({"config": str(path), "authToken": token})
        return
    click.echo(f"Wrote {path}")
    if token:
        click.echo(f"Auth token (shown once; also in the config): {token}")
        click.echo("  export AEGIS_AUTH_TOKEN=<token> before using the CLI against this server")
    else:
        click.echo("Localhost zero-config: no token needed. Start with `ag serve` or `ag run \"<prompt>\"`.")


@cli.command()
@click.option("--fix", is_flag=True, help="Install claude-agent-acp into the project-managed npm prefix.")
@json_option
@pass_ctx
def doctor(c: Ctx, fix: bool) -> None:
    """Check the setup; each problem comes with its fix. Exit 1 on any failure."""
    from aegisctl._doctor import run_checks

    results = run_checks(socket_path=c.socket, fix=fix)
    if c.json:
        out.echo_json({"ok": all(r["status"] != "fail" for r in results), "checks": results})
    else:
        marks = {"ok": out.style("ok  ", fg="green"), "warn": out.style("warn", fg="yellow"),
                 "fail": out.style("FAIL", fg="red", bold=True)}
        for r in results:
            click.echo(f"[{marks[r['status']]}] {r['name']}: {r['detail']}")
            if r["status"] != "ok" and r.get("fix"):
                click.echo(f"       fix: {r['fix']}")
    sys.exit(EXIT_ERROR if any(r["status"] == "fail" for r in results) else EXIT_OK)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@json_option
@click.pass_obj
def config_show(c: Ctx, config_path: str | None) -> None:
    """Print the resolved configuration and where each value came from (secrets masked)."""
    from aegisd.core.config import describe, load_config
    from aegisd.core.errors import AegisError

    warnings: list[str] = []
    try:
        cfg = load_config(config_path=config_path, warnings=warnings)
    except AegisError as exc:
        fail(exc.message)
    rows = describe(cfg)
    if c.json:
        out.echo_json({"configFile": cfg.configPath, "values": {k: {"value": v, "source": s} for k, v, s in rows},
                       "warnings": warnings})
        return
    click.echo(f"config file: {cfg.configPath or '(none; defaults and environment)'}")
    out.table(["key", "value", "source"], [[k, out.one_line(v, 60), s] for k, v, s in rows])
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


@cli.group("keys")
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


@cli.group("service")
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


def main() -> None:
    try:
        cli.main(prog_name=os.path.basename(sys.argv[0]) or "ag")
    except KeyboardInterrupt:
        sys.exit(130)
