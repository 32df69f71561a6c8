"""The `aegisd` command: load the configuration, set up logging, run the daemon until a signal (or `ag stop`),
and turn any failure into one line naming the cause and the setting to change."""

from __future__ import annotations

import signal
import sys
from typing import Any

import structlog
import trio

from aegisd import __version__
from aegisd.app.daemon import Daemon
from aegisd.core.config import Config, load_config
from aegisd.core.errors import AegisError

log = structlog.get_logger("aegisd")


async def _main(config: Config) -> int:
    shutdown = trio.Event()
    daemon = Daemon(config)
    await daemon.check_bind_safety_at_start()  # refused plainly (exit 2), not from inside a nursery's exception group
    # The receiver wraps the nursery, so a second signal during cleanup is ours too (not a default death).
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("aegisd.sighup", note="allowedWorkDirs reload on next use")
                        continue
                    if shutdown.is_set():
                        log.warning("aegisd.forced_stop")
                        nursery.cancel_scope.cancel()
                        return
                    log.info("aegisd.signal", signal=signal.Signals(signum).name)
                    shutdown.set()
            nursery.start_soon(watch)
            await daemon.run(shutdown)
            nursery.cancel_scope.cancel()
    return 0


def main(argv: list[str] | None = None) -> None:
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file to use.")
    @click.option("--host", help="Bind address (default 127.0.0.1).")
    @click.option("--port", type=int, help="HTTP port (default 9100).")
    @click.option("--state-dir", help="State directory (default ~/.aegis).")
    @click.option("--socket", "socket_path", help="Control socket path.")
    @click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
    @click.option("--log-format", type=click.Choice(["auto", "console", "json"]),
                  help="Log lines for people (console) or journald (json); auto: json under systemd or in a pipe.")
    @click.option("--debug", is_flag=True, help="Debug logging, and tracebacks for failures.")
    @click.version_option(__version__, prog_name="aegisd")
    def cli(config_path: str | None, host: str | None, port: int | None, state_dir: str | None,
            socket_path: str | None, log_level: str | None, log_format: str | None, debug: bool) -> None:
        """Run the Aegis daemon in the foreground."""
        run_foreground(config_path=config_path, overrides={
            "host": host, "port": port, "stateDir": state_dir, "socket": socket_path,
            "logLevel": "debug" if debug else log_level, "logFormat": log_format})

    cli.main(args=argv, prog_name="aegisd")


def raise_limits(config: Config) -> None:
    """The soft open-files limit up to the hard one (systemd's default soft limit is 1024: ~230 sessions), and
    a warning when what it allows is below maxSessions."""
    from aegisd.sessions._limits import raise_nofile, sessions_allowed

    before, soft, hard = raise_nofile()
    allowed = sessions_allowed(soft)
    log.info("aegisd.limits", nofile=soft, nofile_before=before, nofile_hard=hard, sessions_allowed=allowed,
             max_sessions=config.maxSessions)
    if allowed < config.maxSessions:
        log.warning("aegisd.nofile_low", nofile=soft, sessions_allowed=allowed, max_sessions=config.maxSessions,
                    fix="raise the hard limit: LimitNOFILE=65536 in the unit (ag service install sets it), or "
                        "`ulimit -Hn` in the shell that starts aegisd")


def run_foreground(*, config_path: str | None = None, overrides: dict[str, Any] | None = None) -> None:
    """Run the daemon until it is stopped. A failure is one line on stderr naming the cause and the setting to
    change (and a JSON log event for journald); the traceback only at debug level."""
    from aegisd.app.explain import explain
    from aegisd.app.logs import setup_logging, wants_json

    warnings: list[str] = []
    try:
        config = load_config(config_path=config_path, overrides=overrides, warnings=warnings)
    except AegisError as exc:
        print(f"aegisd: {exc.message}", file=sys.stderr)
        sys.exit(2)
    json_logs = wants_json(config.logFormat)
    setup_logging(config.logLevel, json=json_logs)
    for w in warnings:
        log.warning("config.warning", detail=w)
    raise_limits(config)
    try:
        code = trio.run(_main, config)
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every failure becomes one readable line
        message, code = explain(exc, config)
        if config.logLevel == "debug":
            log.exception("aegisd.failed", error=message)
        elif json_logs:
            log.error("aegisd.failed", error=message)
        print(f"aegisd: {message}", file=sys.stderr)
        sys.exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
