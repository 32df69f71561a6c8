"""Setup: write the project's config (`init`), check the setup (`doctor`), show the resolved config."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aegisctl import _output as out
from aegisctl.cli._context import EXIT_ERROR, EXIT_OK, Ctx, fail, json_option, pass_ctx


@click.command()
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


@click.command()
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


@click.group("config")
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
