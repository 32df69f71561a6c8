"""aegisd: the root nursery, startup and shutdown order, signals.

Startup: config -> store (single-writer lock) -> event bus -> lifeline reaper -> sessions recovered ->
control socket -> HTTP -> READY. Shutdown (SIGTERM/SIGINT, or the `shutdown` event): stop accepting, end
streams, stop every agent (their states are kept for the next start to resume), flush and close the store,
remove the socket. A second signal during shutdown skips the graceful part."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import trio

from . import __version__
from .acp import Lifeline
from .config import Config, load_config
from .errors import AegisError, Forbidden, ValidationError
from .events import EventBus
from .models import SessionRecord
from .sessions import SessionManager
from .store import Store, open_store

if TYPE_CHECKING:
    from .ops import Op, OpContext

log = structlog.get_logger("aegisd")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Daemon:
    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.pid = os.getpid()
        self.started_at = time.time()
        self.draining = False
        self.store: Store = open_store(config)
        self.bus = EventBus(self.store)
        self.lifeline = Lifeline(grace=config.killGraceMs / 1000)
        self.manager: SessionManager = None  # type: ignore[assignment]  # set in run()
        self.http_url = config.base_url
        self.socket_path = config.socket_path

    # ---- access (auth and ownership grow here; the socket acts as admin) -----------------------
    def authorize(self, ctx: OpContext, op: Op, params: Any) -> None:
        if self.draining and op.permission == "create":
            raise Forbidden("the daemon is shutting down")

    def can_see(self, ctx: OpContext, session_id: str) -> bool:
        return True

    def visible(self, ctx: OpContext, recs: Iterable[SessionRecord]) -> list[SessionRecord]:
        return [r for r in recs if self.can_see(ctx, r.id)]

    def session(self, ctx: OpContext, ident: str) -> SessionRecord:
        return self.manager.get(ident)

    # ---- lifecycle -----------------------------------------------------------------------------
    def check_bind_safety(self) -> None:
        if not is_loopback(self.config.host) and not self.config.authToken:
            raise ValidationError(
                f"refusing to listen on non-loopback address {self.config.host} without authentication: "
                "set AEGIS_AUTH_TOKEN (or authToken in the config), or bind 127.0.0.1")

    async def run(self, shutdown: trio.Event, *,
                  task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config as HyperConfig
        from hypercorn.trio import serve as hypercorn_serve

        from . import _systemd
        from .api import create_app
        from .control import serve_control

        self.check_bind_safety()
        cfg = self.config
        cfg.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        try:
            await self.bus.open()
            await self.lifeline.start()
            async with trio.open_nursery() as root:
                await root.start(self.bus.run_persister)
                async with trio.open_nursery() as sessions:
                    self.manager = SessionManager(config=cfg, store=self.store, bus=self.bus,
                                                  lifeline=self.lifeline, nursery=sessions, environ=self.environ)
                    await self.manager.recover()
                    async with trio.open_nursery() as servers:
                        await servers.start(serve_control, self, self.socket_path)
                        hc = HyperConfig()
                        hc.bind = [f"{cfg.host}:{cfg.port}" if ":" not in cfg.host else f"[{cfg.host}]:{cfg.port}"]
                        hc.errorlog = logging.getLogger("hypercorn.error")
                        hc.accesslog = None
                        hc.graceful_timeout = 2.0
                        http_stop = trio.Event()
                        binds = await servers.start(partial(hypercorn_serve, create_app(self), hc,
                                                            shutdown_trigger=http_stop.wait))
                        self.http_url = cfg.baseUrl.rstrip("/") if cfg.baseUrl else str(binds[0])
                        log.info("aegisd.ready", version=__version__, http=self.http_url,
                                 socket=str(self.socket_path), store=self.store.name, pid=self.pid,
                                 sessions=len(self.manager.records))
                        _systemd.notify("READY=1\nSTATUS=serving")
                        interval = _systemd.watchdog_interval()
                        if interval:
                            servers.start_soon(_systemd.run_watchdog, interval)
                        task_status.started(self)
                        await shutdown.wait()
                        log.info("aegisd.stopping")
                        self.draining = True
                        _systemd.notify("STOPPING=1")
                        self.bus.close_all()
                        http_stop.set()
                        servers.cancel_scope.cancel()
                    await self.manager.shutdown()
                root.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.lifeline.close()
                await self.store.close()
                log.info("aegisd.stopped")


async def _main(config: Config) -> int:
    shutdown = trio.Event()
    daemon = Daemon(config)
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
    @click.version_option(__version__, prog_name="aegisd")
    def cli(config_path: str | None, host: str | None, port: int | None, state_dir: str | None,
            socket_path: str | None, log_level: str | None) -> None:
        """Run the Aegis daemon in the foreground."""
        run_foreground(config_path=config_path, overrides={"host": host, "port": port, "stateDir": state_dir,
                                                           "socket": socket_path, "logLevel": log_level})

    cli.main(args=argv, prog_name="aegisd")


def run_foreground(*, config_path: str | None = None, overrides: dict[str, Any] | None = None) -> None:
    from ._logs import setup_logging

    warnings: list[str] = []
    try:
        config = load_config(config_path=config_path, overrides=overrides, warnings=warnings)
    except AegisError as exc:
        print(f"aegisd: {exc.message}", file=sys.stderr)
        sys.exit(2)
    setup_logging(config.logLevel)
    for w in warnings:
        log.warning("config.warning", detail=w)
    try:
        code = trio.run(_main, config)
    except AegisError as exc:
        log.error("aegisd.failed", error=exc.message, code=exc.code)
        print(f"aegisd: {exc.message}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ValidationError) else 1)
    except OSError as exc:
        log.error("aegisd.failed", error=str(exc))
        print(f"aegisd: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
