"""The composition root: the only place that knows every service. It builds each one once, hands each part the
few it needs (features and notifiers their narrow dependencies, operations and surfaces the typed `Services`
bundle of aegisd/ops/_services.py), and runs them under one root nursery.

Startup: config -> store (single-writer lock) -> what the features keep in it -> event bus -> lifeline reaper and
session cgroups -> sessions recovered -> notifiers, pipelines -> HTTP -> control socket -> READY. Shutdown
(SIGTERM/SIGINT, or `ag stop`): stop accepting, end streams, stop every agent (their states are kept for the next
start to resume), flush and close the store, remove the socket. A second signal during shutdown skips the graceful
part (aegisd/app/main.py).

Shutdown always ends, within the systemd unit's TimeoutStopSec (15 s), even when the store hangs or fails: once it
began, the daemon waits for the store at most STORE_STOP_SOFT_S while the store is degraded, and STORE_STOP_HARD_S in
any case; then it gives up on the store (every waiting write fails, aegisd/store/_health.py), the agents are stopped
all the same, the closing of the store is bounded too, and aegisd exits non-zero naming what was not stored."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial

import structlog
import trio

from aegisd import __version__
from aegisd.acp import Lifeline
from aegisd.acp._cgroup import SessionCgroups
from aegisd.app import systemd
from aegisd.app._changes import ChangeRouter
from aegisd.auth import AuthThrottle, CredentialWatch, KeyStore, RateLimiter
from aegisd.auth._sse_tokens import SseTokens
from aegisd.auth.access import Access
from aegisd.auth.audit import AuditLog
from aegisd.auth.callers import Callers
from aegisd.auth.oidc import Oidc
from aegisd.bus import EventBus
from aegisd.cluster import Cluster, check_cluster_config, node_identity
from aegisd.core.config import Config, is_loopback
from aegisd.core.errors import NotFound, QuotaExceeded, StoreUnavailable, ValidationError
from aegisd.core.models import Event
from aegisd.core.sections import parse_endpoints
from aegisd.features.memory import MemoryStore
from aegisd.features.metering import UsageLedger
from aegisd.features.pipelines import PipelineManager, default_stage_timeout
from aegisd.features.quotas import QuotaGuard, Quotas, parse
from aegisd.features.templates import TemplateStore
from aegisd.features.verify import Verifier
from aegisd.notify.alerts import Alerts
from aegisd.notify.mail import Email
from aegisd.notify.webhooks import Webhooks
from aegisd.ops import Services, stage_sessions
from aegisd.sessions import SessionManager
from aegisd.sessions._limits import is_exhaustion
from aegisd.store import Collection, RecordLog, Store, open_store
from aegisd.surfaces.control import serve_control
from aegisd.surfaces.http import create_app
from aegisd.surfaces.telegram import Telegram

log = structlog.get_logger("aegisd")

STORE_STOP_SOFT_S = 6.0  # after the stop began: give up on a store that is degraded
STORE_STOP_HARD_S = 10.0  # give up on the store whatever it says (a call that hangs)
STORE_CLOSE_S = 2.0  # closing the store (final flush, releasing the lock) at most this long


class Daemon:
    """Every service of one daemon, built from its configuration; `run()` runs them."""

    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        check_cluster_config(config)  # TLS files, and what a node on a shared store needs: refused before anything
        self.config = cfg = config
        state = config.state_path
        self.environ = dict(os.environ if environ is None else environ)
        self.store: Store = open_store(config)
        self.bus = EventBus(self.store)
        self.lifeline = Lifeline(grace=config.killGraceMs / 1000)
        self.cgroups: SessionCgroups | None = None  # where they can be had: known once run() starts
        self.manager = SessionManager(config=cfg, store=self.store, bus=self.bus, lifeline=self.lifeline,
                                      environ=self.environ)
        self.keys = KeyStore(Collection(self.store, "keys"), legacy_file=state / "keys.json")
        self.audit = AuditLog(RecordLog(self.store, "audit"), legacy_dir=state / "audit")
        self.usage = UsageLedger(RecordLog(self.store, "usage"), legacy_file=state / "usage.jsonl")
        self.quotas = QuotaGuard(self.usage, self.manager.live_owned_by, self._quotas_of)
        self.manager.usage, self.manager.quotas = self.usage, self.quotas
        self.oidc: Oidc | None = None
        if cfg.oidc.enabled:
            try:
                import jwt  # noqa: F401
            except ImportError:
                raise ValidationError("single sign-on (oidc) needs PyJWT: pip install 'aegis-py[oidc]'") from None
            self.oidc = Oidc(cfg.oidc, lambda: self.services.http_url, Collection(self.store, "sso-sessions"),
                             legacy_file=state / "sso-sessions.json")
        self.access = Access(config=cfg, keys=self.keys, audit=self.audit, sessions=self.manager, oidc=self.oidc,
                             draining=lambda: self.services.draining)
        # open streams end when the credential that opened them does (revoked, expired, rotated, signed out)
        self.credentials = CredentialWatch(self.keys, lambda: self.oidc)
        self.keys.on_change = self.credentials.changed
        if self.oidc is not None:
            self.oidc.on_change = self.credentials.changed
        self.alerts = Alerts(cfg.alerting)
        self.store.on_fenced = self.manager.fence  # another node took a session, or the lock is lost
        self.store.health.on_change = self.alerts.store_changed  # one alert per outage of the store
        self.manager.on_exhausted = lambda detail: self.alerts.record("resource_exhausted", detail)
        self.webhooks = Webhooks(bus=self.bus, records=self.manager.records, alert=self.alerts.record,
                                 endpoints=parse_endpoints(cfg.webhooks), dlq=RecordLog(self.store, "webhooks-dlq"),
                                 legacy_dlq=state / "webhooks-dlq.json")
        self.verifier = Verifier(config=cfg.verification, bus=self.bus, sessions=self.manager, environ=self.environ,
                                 lifeline=self.lifeline, cgroups=lambda: self.cgroups)
        self.pipelines = PipelineManager(sessions=self.manager, bus=self.bus, verifier=self.verifier,
                                         collection=Collection(self.store, "pipelines"), legacy_dir=state / "pipelines",
                                         default_timeout_ms=default_stage_timeout())
        self.mail = Email(bus=self.bus, records=self.manager.records, http_url=lambda: self.services.http_url,
                          cfg=cfg.email) if cfg.email.enabled else None
        self.templates = TemplateStore(Collection(self.store, "templates"))
        self.memory = MemoryStore(Collection(self.store, "memory"))
        self.services = Services(
            config=cfg, store=self.store, bus=self.bus, manager=self.manager, access=self.access, keys=self.keys,
            audit=self.audit, templates=self.templates, memory=self.memory, usage=self.usage, quotas=self.quotas,
            pipelines=self.pipelines, verifier=self.verifier, webhooks=self.webhooks, alerts=self.alerts,
            lifeline=self.lifeline, callers=Callers(token=self.lifeline.token, cgroups=None, agents=self._agent_pids),
            credentials=self.credentials, auth_throttle=AuthThrottle(), sse_tokens=SseTokens(),
            rate_limiter=RateLimiter(), oidc=self.oidc, environ=self.environ, http_url=cfg.base_url,
            request_stop=self.request_stop)
        self.identity = node_identity(cfg)
        self.manager.node_id = self.pipelines.node_id = self.identity.id
        self.cluster = self._cluster()
        self.services.cluster = self.cluster
        self.bus.is_local = self._made_here
        self.pipelines.create_session = stage_sessions(self.services)  # stages: the session.create path
        self.telegram = Telegram(self.services, cfg.telegram) if cfg.telegram.enabled else None
        self.services.channels = [c.health for c in (self.telegram, self.mail) if c is not None]
        self.changes = ChangeRouter.of(self.services)  # other nodes' changes to the store reach the caches here
        self.changes.attach(self.store)  # where the store reports them (PostgreSQL)
        self._shutdown: trio.Event | None = None  # run()'s; set by request_stop (the daemon.stop operation)
        self._stop_bound: trio.CancelScope | None = None  # the task bounding the stop's waits on the store

    def _made_here(self, ev: Event) -> bool:
        """Whether this node made an event: the node running its session (or pipeline). In a cluster every node
        receives every event; notifications (webhooks, mail, Telegram, alerts) go out from that node alone."""
        rec = self.manager.records.get(ev.sessionId)
        if rec is not None:
            return rec.node in (None, self.identity.id)
        pipeline = self.pipelines.records.get(ev.sessionId)
        return pipeline is None or pipeline.node in (None, self.identity.id)

    def _cluster(self) -> Cluster:
        """A cluster of one, or, on PostgreSQL, a node of the cluster of every daemon on the same tables."""
        from aegisd.store._postgres import PostgresStore

        if not isinstance(self.store, PostgresStore):
            return Cluster(self.config, self.identity, self.manager)
        from aegisd.cluster._pg import PgCluster
        from aegisd.store import NodeSpec

        ident = self.identity
        self.store.node = NodeSpec(id=ident.id, url=ident.url, host=ident.host, state_dir=ident.state_dir,
                                   version=__version__, max_sessions=self.config.maxSessions,
                                   work_dirs=self.manager.workdirs.roots, lease_ms=self.config.nodeLeaseMs)
        return PgCluster(self.config, ident, self.manager, self.store, self.bus)

    # the few things tests and the CLI read off a running daemon
    @property
    def http_url(self) -> str:
        return self.services.http_url

    @property
    def socket_path(self) -> os.PathLike[str]:
        return self.config.socket_path

    @property
    def pid(self) -> int:
        return self.services.pid

    def _agent_pids(self) -> dict[int, str]:
        """The pid of every live agent process, with its session (for tracing callers without cgroups)."""
        return {r.rec.pid: sid for sid, r in self.manager.runners.items() if r.rec.pid is not None}

    def _quotas_of(self, key_id: str) -> Quotas | None:
        try:
            raw = self.keys.get(key_id).quotas
        except NotFound:
            return None
        try:
            return parse(raw)
        except ValidationError as exc:  # e.g. an imported keys.json: fail closed, and say how to fix it
            raise QuotaExceeded(f"the quotas stored for API key {key_id} are invalid ({exc.message}); "
                                "set them again with `ag keys quota` or PUT /v1/auth/keys/{id}/quotas") from None

    def request_stop(self) -> None:
        """Stop as SIGTERM does: the `daemon.stop` operation (`ag stop`)."""
        if self._shutdown is not None and not self._shutdown.is_set():
            log.info("aegisd.stop_requested")
            self._shutdown.set()

    async def check_bind_safety_at_start(self) -> None:
        """`check_bind_safety` before the daemon runs, with the API keys read from the store when they matter (the
        store is opened for that and closed again)."""
        if is_loopback(self.config.host) or self.config.authToken or self.oidc is not None:
            return
        await self.store.open()
        try:
            await self.keys.open()
        finally:
            await self.store.close()
        self.check_bind_safety()

    def check_bind_safety(self) -> None:
        if not is_loopback(self.config.host) and not self.config.authToken and not self.keys.has_usable_keys() \
                and self.oidc is None:  # expired keys authenticate nobody: they do not count
            raise ValidationError(
                f"refusing to listen on non-loopback address {self.config.host} without authentication: "
                "set AEGIS_AUTH_TOKEN (or authToken in the config), or bind 127.0.0.1")

    # ---- lifecycle -----------------------------------------------------------------------------
    async def run(self, shutdown: trio.Event, *,
                  task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        self._shutdown = shutdown
        cfg, svc = self.config, self.services
        cfg.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        try:
            await self._open_persistence()
            self.check_bind_safety()  # with the keys loaded
            await self.bus.open()
            await self.cluster.start()
            await self.lifeline.start()
            if cfg.sessionCgroups:
                self.cgroups = SessionCgroups.create(self.lifeline.token)
                if self.cgroups is not None:
                    await self.lifeline.register_cgroups(self.cgroups.root)
            self.manager.cgroups = svc.cgroups = svc.callers.cgroups = self.cgroups
            svc.callers.self_test()
            async with trio.open_nursery() as root:
                await root.start(self.store.monitor)  # reconnects, takes the lock again, keeps health current
                await root.start(self._persist_events)
                await root.start(self.bus.run_tail)  # a cluster: the other nodes' events, in the store's order
                await root.start(self.audit.run)
                await root.start(self.keys.run)
                await root.start(self.usage.run)
                await root.start(self.credentials.run)
                await root.start(self.manager.run)  # recovers stored sessions, resumes the live ones
                await root.start(self.webhooks.run)
                await root.start(self.alerts.run, self.bus)
                for service in (self.oidc, self.telegram, self.mail):
                    if service is not None:
                        await root.start(service.run)
                await root.start(self.pipelines.run)
                await root.start(self.changes.run)  # a cluster: what other nodes changed, in the caches here
                await root.start(self.cluster.run)  # a cluster: nodes, adoption of a lost node's sessions
                await self._serve(shutdown, task_status=task_status)
                self._bound_stop()
                await self.manager.shutdown()
                root.cancel_scope.cancel()
        finally:
            self._bound_stop()
            with trio.CancelScope(shield=True):
                if self.cgroups is not None:
                    await self.cgroups.close()
                await self.lifeline.close()
                try:
                    await self.audit.close()  # what is still queued goes to the store first
                    await self.usage.close()
                    await self.keys.flush_used()
                finally:
                    await self._close_store()
                if self._stop_bound is not None:
                    self._stop_bound.cancel()
                log.info("aegisd.stopped")
        if self.store.health.given_up is not None:
            raise StoreUnavailable(f"stopped without storing everything: {self.store.health.given_up}")

    def _bound_stop(self) -> None:
        """Once the stop began: give up on the store when it keeps the stop waiting (see the module's docstring).
        A system task, so it runs beside whatever shields the stop's own waits."""
        if self._stop_bound is not None:
            return
        scope = self._stop_bound = trio.CancelScope()
        health = self.store.health

        async def bound() -> None:
            with scope:
                start = trio.current_time()
                while trio.current_time() - start < STORE_STOP_HARD_S:
                    if not health.ok and trio.current_time() - start >= STORE_STOP_SOFT_S:
                        break
                    await trio.sleep(0.2)
                health.give_up(f"the store kept the stop waiting for {trio.current_time() - start:.0f} s "
                               f"({health.reason or 'no answer'})")
        trio.lowlevel.spawn_system_task(bound)

    async def _close_store(self) -> None:
        """Close the store (final flush, releasing its lock), at most STORE_CLOSE_S: a store that does not answer
        is left behind (its lock goes with this process)."""
        try:
            with trio.move_on_after(STORE_CLOSE_S) as cs:
                await self.store.close()
        except StoreUnavailable as exc:
            log.error("aegisd.store_close_failed", error=exc.message)
            self.store.health.give_up(exc.message)
            return
        except OSError as exc:
            log.error("aegisd.store_close_failed", error=str(exc))
            self.store.health.give_up(f"closing the store failed: {exc}")
            return
        if cs.cancelled_caught:
            log.error("aegisd.store_close_failed", error=f"no answer within {STORE_CLOSE_S} s")
            self.store.health.give_up(f"closing the store took longer than {STORE_CLOSE_S} s")

    async def _persist_events(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The bus's persister, started again when a write fails for want of fds, threads or memory (the bus keeps
        the batch it could not store and stores it on the next pass): running short must not end the daemon."""
        status = task_status
        while True:
            try:
                await self.bus.run_persister(task_status=status)
                return
            except Exception as exc:
                if not is_exhaustion(exc):
                    raise
                log.error("aegisd.events_not_saved", error=repr(exc))
                status = trio.TASK_STATUS_IGNORED
                await trio.sleep(1)

    async def _open_persistence(self) -> None:
        """Load what the features keep in the store; files an earlier version kept beside it move in first."""
        state = self.config.state_path
        await self.keys.open()
        await self.audit.open()
        await self.usage.open()
        await self.templates.open(legacy=state / "templates.json")
        await self.memory.open(legacy=state / "memory.json")
        await self.webhooks.open()
        if self.oidc is not None:
            await self.oidc.open()

    async def _serve(self, shutdown: trio.Event, *,
                     task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        """The surfaces, until shutdown: HTTP first, the control socket last (once it answers, all is up)."""
        from hypercorn.config import Config as HyperConfig
        from hypercorn.trio import serve as hypercorn_serve

        cfg, svc = self.config, self.services
        async with trio.open_nursery() as servers:
            hc = HyperConfig()
            hc.bind = [f"{cfg.host}:{cfg.port}" if ":" not in cfg.host else f"[{cfg.host}]:{cfg.port}"]
            hc.errorlog = logging.getLogger("hypercorn.error")
            hc.accesslog = None
            hc.graceful_timeout = 2.0
            if cfg.tlsCert and cfg.tlsKey:  # HTTPS (checked at start: check_cluster_config); binds say https://
                hc.certfile, hc.keyfile = os.path.expanduser(cfg.tlsCert), os.path.expanduser(cfg.tlsKey)
            http_stop = trio.Event()
            binds = await servers.start(partial(hypercorn_serve, create_app(svc), hc, shutdown_trigger=http_stop.wait))
            svc.http_url = cfg.baseUrl.rstrip("/") if cfg.baseUrl else str(binds[0])
            svc.http_binds = tuple(map(str, binds))
            if not cfg.advertiseUrl and self.cluster.url != svc.http_url:  # port 0: known now
                self.cluster.set_url(svc.http_url)
                await self.cluster.publish_url()
            await servers.start(serve_control, svc, cfg.socket_path)
            log.info("aegisd.ready", http=svc.http_url,
                     dashboard=f"{svc.http_url}/dashboard/" if cfg.dashboardEnabled else None,
                     socket=str(cfg.socket_path), store=self.store.name, version=__version__, pid=svc.pid,
                     sessions=len(self.manager.records), cgroups=str(self.cgroups.root) if self.cgroups else None)
            systemd.notify("READY=1\nSTATUS=serving")
            interval = systemd.watchdog_interval()
            if interval:
                servers.start_soon(systemd.run_watchdog, interval)
            task_status.started(self)
            await shutdown.wait()
            log.info("aegisd.stopping")
            svc.draining = True
            systemd.notify("STOPPING=1")
            self.pipelines.stop()
            self.bus.close_all()
            http_stop.set()
            servers.cancel_scope.cancel()
