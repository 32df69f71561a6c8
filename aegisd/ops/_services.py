"""The services operations run on: one typed bundle, built once by the composition root (aegisd/app) and handed
to every surface. Operations and surfaces reach the daemon only through it; nothing here knows how it was built."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from aegisd.acp import Lifeline
from aegisd.acp._cgroup import SessionCgroups
from aegisd.auth import AuthThrottle, CredentialWatch, KeyStore, RateLimiter
from aegisd.auth._sse_tokens import SseTokens
from aegisd.auth.access import Access
from aegisd.auth.audit import AuditLog
from aegisd.auth.callers import Callers
from aegisd.auth.oidc import Oidc
from aegisd.bus import EventBus
from aegisd.cluster import Cluster
from aegisd.core.config import Config
from aegisd.features.memory import MemoryStore
from aegisd.features.metering import UsageLedger
from aegisd.features.pipelines import PipelineManager
from aegisd.features.quotas import QuotaGuard
from aegisd.features.templates import TemplateStore
from aegisd.features.verify import Verifier
from aegisd.notify.alerts import Alerts
from aegisd.notify.webhooks import Webhooks
from aegisd.sessions import SessionManager
from aegisd.store import Store


@dataclass
class Services:
    config: Config
    store: Store
    bus: EventBus
    manager: SessionManager
    access: Access
    keys: KeyStore
    audit: AuditLog
    templates: TemplateStore
    memory: MemoryStore
    usage: UsageLedger
    quotas: QuotaGuard
    pipelines: PipelineManager
    verifier: Verifier
    webhooks: Webhooks
    alerts: Alerts
    lifeline: Lifeline
    callers: Callers
    credentials: CredentialWatch
    auth_throttle: AuthThrottle
    sse_tokens: SseTokens
    rate_limiter: RateLimiter
    oidc: Oidc | None = None
    cluster: Cluster | None = None  # the nodes (a cluster of one unless the store is PostgreSQL)
    # notification channels besides webhooks (Telegram, email): each reports its health
    channels: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cgroups: SessionCgroups | None = None
    screenshot_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(2))
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    # what the running daemon learns as it starts and stops
    http_url: str = ""
    http_binds: tuple[str, ...] = ()
    draining: bool = False
    request_stop: Callable[[], None] = lambda: None
