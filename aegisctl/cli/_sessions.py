"""Sessions: create, show, send, read, interrupt, kill, close, verify, screenshot."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from aegisctl import _output as out
from aegisctl.cli._context import EXIT_ERROR, EXIT_USAGE, Ctx, fail, json_option, pass_ctx
from aegisctl.cli._turn import failure_lines, stream_turn
from aegisctl.client import ClientError

REUSE_HELP = ("Reuse an idle session of the same workDir and agent (and model) when there is one, instead of "
              "starting a new agent. Without it the CLI always starts a new session (the API reuses by default).")


def next_steps(s: dict[str, Any], base_url: str | None) -> None:
    sid, short = s["id"], out.short_id(s["id"])
    base = (base_url or "http://127.0.0.1:9100").rstrip("/")
    auth = ' -H "Authorization: Bearer $AEGIS_AUTH_TOKEN"' if os.environ.get("AEGIS_AUTH_TOKEN") else ""
    click.echo("Next steps:")
    click.echo(f"  Follow:   ag read {short} --follow")
    click.echo(f"  Send:     ag send {short} \"<text>\"")
    click.echo(f"  Approve:  ag approve {short}          (when it asks for permission)")
    click.echo(f"  Kill:     ag kill {short}")
    click.echo(f"  Status:   curl{auth} {base}/v1/sessions/{sid}/health")
    click.echo(f"  Read:     curl{auth} {base}/v1/sessions/{sid}/read")


def create_params(cwd: str, prompt: str | None, name: str | None, model: str | None, agent: str | None,
                  mode: str | None, reuse: bool = False) -> dict[str, Any]:
    """session.create's params. Unlike the API, the CLI reuses an idle session only when asked (--reuse); the
    project's .aegis/config.yaml gives the default name and model (`ag init --name/--model`)."""
    from aegisctl._init import project_defaults

    work = Path(cwd).expanduser().absolute()
    defaults = project_defaults(work)
    return {"workDir": str(work), "prompt": prompt, "name": name or defaults.get("name"),
            "model": model or defaults.get("model"), "agent": agent, "permissionMode": mode, "reuse": reuse}


def check_prompt(prompt: str | None, example: str) -> None:
    """An empty or blank prompt is a usage error: the agent would get nothing to do (and `ag run` would wait for
    a turn that never comes)."""
    if prompt is not None and not prompt.strip():
        fail(f"the prompt is empty: tell the agent what to do, e.g. {example}", EXIT_USAGE)


def fail_start(s: dict[str, Any]) -> NoReturn:
    lines = failure_lines(s) or ["unknown reason"]
    fail("the agent failed to start: " + "\n  ".join(lines))


def say_created(s: dict[str, Any]) -> None:
    if s.get("reused"):
        click.echo(f"Reused idle session: {s['name']} (its agent was waiting in {s['workDir']}; --reuse)")
    else:
        click.echo(f"Session created: {s['name']}")
    click.echo(f"ID: {s['id']}")


@click.command()
@click.argument("prompt", required=False)
@click.option("--cwd", default=".", show_default=True, help="Working directory of the session.")
@click.option("--name", help="Display name.")
@click.option("--model", help="Model for this session.")
@click.option("--agent", help="Agent to run (default: the configured default, claude).")
@click.option("--permission-mode", type=click.Choice(["default", "plan", "acceptEdits", "bypassPermissions",
                                                      "dontAsk", "auto"]))
@click.option("--reuse", is_flag=True, help=REUSE_HELP)
@json_option
@pass_ctx
def create(c: Ctx, prompt: str | None, cwd: str, name: str | None, model: str | None, agent: str | None,
           permission_mode: str | None, reuse: bool) -> None:
    """Create a session (optionally with a first prompt) and print its id.

    Without PROMPT the session waits for `ag send`; an empty or blank PROMPT is a usage error. The name and
    model default to `name`/`model` of the project's .aegis/config.yaml (`ag init --name/--model`)."""
    check_prompt(prompt, f'ag create "List the main technologies." --cwd {cwd}')
    s = c.call("session.create", **create_params(cwd, prompt, name, model, agent, permission_mode, reuse))
    if c.json:
        out.echo_json(s)
        if s["status"] == "crashed":
            sys.exit(EXIT_ERROR)
        return
    say_created(s)
    if s["status"] == "crashed":
        fail_start(s)
    hello = c.call("hello")
    next_steps(s, hello.get("httpUrl"))


@click.command()
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
        click.echo(f"{'request':>16}: {p['requestId']}  "
                   f"(ag approve {out.short_id(s['id'])} --request {p['requestId']})")
    if s.get("crash"):
        click.echo(f"{'crash':>16}: {s['crash'].get('reason')}")
        if s["crash"].get("stderrTail"):
            click.echo("agent stderr (tail):")
            click.echo(s["crash"]["stderrTail"].rstrip())


@click.command()
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


@click.command()
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
        code = stream_turn(c, session_id, interactive=sys.stdin.isatty(), accept=False, quiet=False)
        sys.exit(code)


def _simple(op: str, done: str) -> Any:
    @click.argument("session_id")
    @json_option
    @pass_ctx
    def command(c: Ctx, session_id: str) -> None:
        res = c.call(op, id=session_id)
        out.echo_json(res) if c.json else click.echo(done if res.get("interrupted", True) else "Nothing to interrupt.")
    return command


interrupt = click.command("interrupt", help="Cancel the current turn.")(_simple("session.interrupt", "Interrupted."))
kill = click.command("kill", help="Kill a session (status killed).")(_simple("session.kill", "Killed."))
close = click.command("close", help="Close a session normally (status completed).")(_simple("session.close", "Closed."))


@click.command()
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


@click.command()
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
