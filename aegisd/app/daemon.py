"""aegisd: the root nursery, startup and shutdown order, signals.

Startup: config -> store (single-writer lock) -> event bus -> lifeline reaper -> sessions recovered ->
control socket -> HTTP -> READY. Shutdown (SIGTERM/SIGINT, or the `shutdown` event): stop accepting, end
streams, stop every agent (their states are kept for the next start to resume), flush and close the store,
remove the socket. A second signal during shutdown skips the graceful part."""

from __future__ import annotations

import hmac
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

from aegisd import __version__
from aegisd.acp import Lifeline
from aegisd.acp._cgroup import SessionCgroups
from aegisd.auth.callers import Callers
from aegisd.bus import EventBus
from aegisd.core.config import Config, load_config
from aegisd.core.errors import (
    AegisError,
    Forbidden,
    SessionForbidden,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from aegisd.core.models import SessionRecord
from aegisd.sessions import SessionManager
from aegisd.store import Store, open_store

if TYPE_CHECKING:
    from aegisd.auth.oidc import Oidc
    from aegisd.features.quotas import Quotas
    from aegisd.notify.mail import Email
    from aegisd.notify.telegram import Telegram
    from aegisd.ops import Op, OpContext, Principal

_ROLE_PERMS = {"admin": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
               "operator": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
               "viewer": frozenset({"audit"})}


class ConfigWatch:
    """Values of the config file that apply without a restart (unless set by env or flag)."""

    def __init__(self, config: Config) -> None:
        from pathlib import Path

        self._config = config
        self._path = Path(config.configPath) if config.configPath else None
        self._mtime: float | None = None
        self._data: dict[str, Any] = {}

    def value(self, key: str, current: Any) -> Any:
        if self._path is None or self._config.sources.get(key, "").startswith(("env:", "flag")):
            return current
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return current
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                from aegisd.core.config import read_config_file

                self._data = read_config_file(self._path)
            except Exception:  # noqa: BLE001 - keep the last good values on a broken edit
                pass
        return self._data.get(key, current) if isinstance(self._data.get(key, current), type(current)) else current

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
        self._shutdown: trio.Event | None = None  # run()'s; set by request_stop (the daemon.stop operation)
        self.store: Store = open_store(config)
        self.bus = EventBus(self.store)
        self.lifeline = Lifeline(grace=config.killGraceMs / 1000)
        self.cgroups: SessionCgroups | None = None  # set in run() where cgroups can be had
        self.callers = Callers(token=self.lifeline.token, cgroups=None, agents=self._agent_pids)
        self.screenshot_limiter = trio.CapacityLimiter(2)  # browsers at once
        self.verifying: set[str] = set()  # sessions whose verification is running
        self.manager: SessionManager = None  # type: ignore[assignment]  # set in run()
        self.pipelines: Any = None  # set in run()
        from aegisd.features.templates import TemplateStore

        self.templates = TemplateStore(config.state_path / "templates.json")
        from aegisd.features.memory import MemoryStore

        self.memory = MemoryStore(config.state_path / "memory.json")
        self.http_url = config.base_url
        self.http_binds: tuple[str, ...] = ()  # every address the HTTP server listens on, as URLs
        self.socket_path = config.socket_path
        from aegisd.auth import KeyStore
        from aegisd.auth.audit import AuditLog

        self.keys = KeyStore(config.state_path / "keys.json")
        self.audit = AuditLog(config.state_path / "audit")
        from aegisd.features.metering import UsageLedger

        self.usage = UsageLedger(config.state_path / "usage.jsonl")
        from aegisd.features.quotas import QuotaGuard

        self.quotas = QuotaGuard(self.usage, lambda key_id: self.manager.live_owned_by(key_id), self._quotas_of)
        self.rate_limiter: Any = None  # the HTTP app's RateLimiter, once it is built
        from aegisd.notify.alerts import Alerts

        self.alerts = Alerts(config.alerting)
        self.mail: Email | None = None
        if config.email.enabled:
            from aegisd.notify.mail import Email

            self.mail = Email(self, config.email)
        self.telegram: Telegram | None = None
        if config.telegram.enabled:
            from aegisd.notify.telegram import Telegram

            self.telegram = Telegram(self, config.telegram)
        self.oidc: Oidc | None = None
        if config.oidc.enabled:
            try:
                import jwt  # noqa: F401
            except ImportError:
                raise ValidationError("single sign-on (oidc) needs PyJWT: pip install 'aegis-py[oidc]'") from None
            from aegisd.auth.oidc import Oidc

            self.oidc = Oidc(config.oidc, lambda: self.http_url, config.state_path / "sso-sessions.json")
        from aegisd.auth._sse_tokens import SseTokens

        self.sse_tokens = SseTokens()
        from aegisd.auth import CredentialWatch

        # open streams end when the credential that opened them does (revoked, expired, rotated, signed out)
        self.credentials = CredentialWatch(self.keys, lambda: self.oidc)
        self.keys.on_change = self.credentials.changed
        if self.oidc is not None:
            self.oidc.on_change = self.credentials.changed
        from aegisd.auth import AuthThrottle

        self.auth_throttle = AuthThrottle()  # failed authentications, per IP and credential (every surface)
        self._config_watch = ConfigWatch(config)

    def _agent_pids(self) -> dict[int, str]:
        """The pid of every live agent process, with its session (for tracing callers without cgroups)."""
        if self.manager is None:
            return {}
        return {r.rec.pid: sid for sid, r in self.manager.runners.items() if r.rec.pid is not None}

    def _quotas_of(self, key_id: str) -> Quotas | None:
        from aegisd.core.errors import NotFound, QuotaExceeded
        from aegisd.features.quotas import parse

        try:
            raw = self.keys.get(key_id).quotas
        except NotFound:
            return None
        try:
            return parse(raw)
        except ValidationError as exc:  # a hand-edited keys.json: fail closed, and say how to fix it
            raise QuotaExceeded(f"the quotas of API key {key_id} in keys.json are invalid ({exc.message}); "
                                "set them again with `ag keys quota` or PUT /v1/auth/keys/{id}/quotas") from None

    # ---- access: authentication, roles, ownership, audit (the socket acts as admin) -------------
    @property
    def auth_token(self) -> str:
        """The master token, re-read when the config file changes (unless it came from env or a flag)."""
        value: str = self._config_watch.value("authToken", self.config.authToken)
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_token) or self.keys.has_keys() or self.oidc is not None

    def request_stop(self) -> None:
        """Stop as SIGTERM does: the `daemon.stop` operation (`ag stop`)."""
        if self._shutdown is not None and not self._shutdown.is_set():
            log.info("aegisd.stop_requested")
            self._shutdown.set()

    def authenticate(self, token: str, *, ip: str = "local") -> Principal | None:
        from aegisd.auth import Credential, effective_permissions, secret_digest
        from aegisd.ops import Principal

        master = self.auth_token
        if master and hmac.compare_digest(token.encode(), master.encode()):
            return Principal(kind="master", role="admin", name="master")
        if self.oidc is not None and token.startswith("ey"):
            from aegisd.auth.oidc import looks_like_jwt

            if looks_like_jwt(token):
                return self.oidc.authenticate(token)
        key = self.keys.authenticate(token) if token.startswith("aegis_") else None
        if key is None:
            return None
        return Principal(kind="key", key_id=key.id, role=key.role, name=f"key:{key.name}",
                         permissions=effective_permissions(key), credential=Credential("key", secret_digest(token)))

    def note_auth_failure(self, ip: str, *, via: str | None = None) -> None:
        self.audit_record(None, "auth.failure", detail={"ip": ip} if via is None else {"ip": ip, "via": via})

    def authorize(self, ctx: OpContext, op: Op, params: Any) -> None:
        perm = op.permission
        if self.draining and perm == "create":
            raise Unavailable("the daemon is shutting down")
        p = ctx.principal
        if p.kind == "agent":
            self._authorize_agent(ctx, op, params)
            return
        if perm == "public":
            return
        if p.kind == "anonymous":
            raise Unauthorized("authentication required")
        if perm == "admin" and p.role != "admin":
            raise Forbidden(f"{op.name} needs the admin role (you are {p.role})")
        if perm == "operator" and p.role not in ("admin", "operator"):
            raise Forbidden(f"{op.name} needs the admin or operator role (you are {p.role})")
        if perm in ("create", "send", "approve", "reject", "kill") and p.role != "admin":
            allowed = p.permissions if p.permissions is not None else _ROLE_PERMS.get(p.role, frozenset())
            if perm not in allowed:
                raise Forbidden(f"{op.name} needs the {perm!r} permission (role {p.role})")

    def _authorize_agent(self, ctx: OpContext, op: Op, params: Any) -> None:
        """A caller inside a session's process tree: see aegisd/auth/_agents.py."""
        from aegisd.auth._agents import AGENT_ACCESS

        access = AGENT_ACCESS.get(op.name)
        if access is None:
            raise Forbidden(f"{op.name} is not available to a session's agent or its tools (this caller runs "
                            f"inside session {ctx.principal.session_id})")
        target = getattr(params, "id", None)
        if access == "act" and isinstance(target, str):
            self.session(ctx, target, act=True)

    def agent_principal(self, session_id: str) -> Principal:
        from aegisd.ops import Principal

        return Principal(kind="agent", role="agent", name=f"agent:{session_id}", session_id=session_id)

    # Ownership: every object a caller creates (session, template, memory entry, pipeline) records
    # owner_of(ctx); owns() decides who may see and act on it. Every ownership check goes through these two
    # (sessions through can_see, which scopes agents to their own session tree first).
    def owner_of(self, ctx: OpContext) -> str | None:
        """The owner id recorded on what this caller creates: its key (None: the master token and local callers);
        an agent's is the owner of its own session."""
        return self.creator(ctx)[0]

    def owns(self, ctx: OpContext, owner: str | None) -> bool:
        """May this caller see (and, with the role's permission, act on) an object recorded with ``owner``?
        Admins and local callers (a strict-RBAC local viewer reads everything): all; keys and SSO principals:
        only their own; an agent: its session owner's (what it may do at all is auth/_agents.py's allow-list)."""
        p = ctx.principal
        if p.kind == "agent":
            return owner == self.owner_of(ctx)
        if p.role == "admin" or p.kind in ("master", "local"):
            return True
        return owner is not None and owner == p.key_id

    def can_see(self, ctx: OpContext, session_id: str) -> bool:
        p = ctx.principal
        if p.kind == "agent":
            from aegisd.auth._agents import created_by

            return session_id == p.session_id or created_by(self.manager.records, session_id, p.session_id or "")
        rec = self.manager.records.get(session_id)
        if rec is None:  # not a session (a pipeline's events): admins only
            return p.role == "admin"
        return self.owns(ctx, rec.ownerKeyId)

    def can_act(self, ctx: OpContext, session_id: str) -> bool:
        """Whether the caller may change this session (beyond reading it). Only agents are limited here: never
        their own session, only the ones they created; roles and permissions are checked in authorize()."""
        p = ctx.principal
        if p.kind != "agent":
            return self.can_see(ctx, session_id)
        from aegisd.auth._agents import created_by

        return created_by(self.manager.records, session_id, p.session_id or "")

    def visible(self, ctx: OpContext, recs: Iterable[SessionRecord]) -> list[SessionRecord]:
        return [r for r in recs if self.can_see(ctx, r.id)]

    def session(self, ctx: OpContext, ident: str, *, act: bool = False) -> SessionRecord:
        """The session a full id or a unique prefix names. A prefix is resolved among the sessions this caller
        can see only, so neither the answer nor an ambiguity error tells anything about other keys' sessions;
        another key's session named by its full id is 403."""
        records = self.manager.records
        if ident in records:
            if not self.can_see(ctx, ident):
                raise SessionForbidden(f"session {ident} belongs to another key")
            rec = records[ident]
        else:
            rec = records[self.manager.resolve_id(ident, among=lambda sid: self.can_see(ctx, sid))]
        if act and not self.can_act(ctx, rec.id):
            raise SessionForbidden(f"an agent may not act on its own session {rec.id}: only on sessions it created")
        return rec

    def creator(self, ctx: OpContext) -> tuple[str | None, str | None]:
        """(ownerKeyId, creatorSessionId) of a session this caller creates: an agent's sessions belong to the
        key that owns the agent's own session, and record the agent's session as their creator."""
        p = ctx.principal
        if p.kind != "agent" or p.session_id is None:
            return p.key_id, None
        own = self.manager.records.get(p.session_id)
        return (own.ownerKeyId if own is not None else None), p.session_id

    def audit_record(self, ctx: OpContext | None, action: str, *, session_id: str | None = None,
                     detail: Any = None) -> None:
        actor = ctx.principal.name if ctx is not None else "system"
        try:
            self.audit.record(actor, action, session_id=session_id, detail=detail)
        except OSError as exc:  # the audit must not take the daemon down; it is logged loudly instead
            log.error("audit.write_failed", action=action, error=str(exc))

    # ---- lifecycle -----------------------------------------------------------------------------
    def check_bind_safety(self) -> None:
        if not is_loopback(self.config.host) and not self.config.authToken and not self.keys.has_usable_keys() \
                and self.oidc is None:  # expired keys authenticate nobody: they do not count
            raise ValidationError(
                f"refusing to listen on non-loopback address {self.config.host} without authentication: "
                "set AEGIS_AUTH_TOKEN (or authToken in the config), or bind 127.0.0.1")

    async def run(self, shutdown: trio.Event, *,
                  task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config as HyperConfig
        from hypercorn.trio import serve as hypercorn_serve

        from aegisd.app import systemd as _systemd
        from aegisd.surfaces.control import serve_control
        from aegisd.surfaces.http import create_app

        self.check_bind_safety()
        self._shutdown = shutdown
        cfg = self.config
        cfg.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        self.audit.open()
        self.usage.open()
        try:
            await self.bus.open()
            await self.lifeline.start()
            if cfg.sessionCgroups:
                self.cgroups = SessionCgroups.create(self.lifeline.token)
                if self.cgroups is not None:
                    await self.lifeline.register_cgroups(self.cgroups.root)
            self.callers.cgroups = self.cgroups
            self.callers.self_test()
            async with trio.open_nursery() as root:
                await root.start(self.bus.run_persister)
                await root.start(self.credentials.run)
                from aegisd.notify.webhooks import Webhooks, parse_endpoints

                self.webhooks = Webhooks(self, parse_endpoints(cfg.webhooks), cfg.state_path / "webhooks-dlq.json")
                async with trio.open_nursery() as sessions:
                    self.manager = SessionManager(config=cfg, store=self.store, bus=self.bus,
                                                  lifeline=self.lifeline, nursery=sessions, environ=self.environ,
                                                  cgroups=self.cgroups)
                    self.manager.usage = self.usage
                    self.manager.quotas = self.quotas
                    await self.manager.recover()
                    await root.start(self.webhooks.run)
                    await root.start(self.alerts.run, self.bus)
                    if self.oidc is not None:
                        await root.start(self.oidc.run)
                    if self.telegram is not None:
                        await root.start(self.telegram.run)
                    if self.mail is not None:
                        await root.start(self.mail.run)
                    from aegisd.features.pipelines import PipelineManager, default_stage_timeout

                    self.pipelines = PipelineManager(self, cfg.state_path / "pipelines",
                                                     default_timeout_ms=default_stage_timeout())
                    await sessions.start(self.pipelines.run)
                    async with trio.open_nursery() as servers:
                        hc = HyperConfig()
                        hc.bind = [f"{cfg.host}:{cfg.port}" if ":" not in cfg.host else f"[{cfg.host}]:{cfg.port}"]
                        hc.errorlog = logging.getLogger("hypercorn.error")
                        hc.accesslog = None
                        hc.graceful_timeout = 2.0
                        http_stop = trio.Event()
                        binds = await servers.start(partial(hypercorn_serve, create_app(self), hc,
                                                            shutdown_trigger=http_stop.wait))
                        self.http_url = cfg.baseUrl.rstrip("/") if cfg.baseUrl else str(binds[0])
                        self.http_binds = tuple(map(str, binds))
                        # the socket last: once it answers, everything (HTTP included) is up
                        await servers.start(serve_control, self, self.socket_path)
                        log.info("aegisd.ready", http=self.http_url,
                                 dashboard=f"{self.http_url}/dashboard/" if cfg.dashboardEnabled else None,
                                 socket=str(self.socket_path), store=self.store.name, version=__version__,
                                 pid=self.pid, sessions=len(self.manager.records),
                                 cgroups=str(self.cgroups.root) if self.cgroups else None)
                        _systemd.notify("READY=1\nSTATUS=serving")
                        interval = _systemd.watchdog_interval()
                        if interval:
                            servers.start_soon(_systemd.run_watchdog, interval)
                        task_status.started(self)
                        await shutdown.wait()
                        log.info("aegisd.stopping")
                        self.draining = True
                        _systemd.notify("STOPPING=1")
                        self.pipelines.stop()
                        self.bus.close_all()
                        http_stop.set()
                        servers.cancel_scope.cancel()
                    await self.manager.shutdown()
                root.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if self.cgroups is not None:
                    await self.cgroups.close()
                await self.lifeline.close()
                await self.store.close()
                self.audit.close()
                self.usage.close()
                log.info("aegisd.stopped")


async def _main(config: Config) -> int:
    shutdown = trio.Event()
    daemon = Daemon(config)
    daemon.check_bind_safety()  # refused plainly (exit 2), not from inside a nursery's exception group
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
