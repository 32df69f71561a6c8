"""One frozen, typed configuration, built once: defaults < config file < AEGIS_* env < explicit overrides.

Every value remembers where it came from (`sources`), so `ag config show` can print it."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec

from aegisd.core.errors import ValidationError
from aegisd.core.sections import (
    check_smtp_url,
    host_entry,
    origin_entry,
    parse_endpoints,
    parse_steps,
    validate_alerting,
)

PermissionMode = Literal["default", "plan", "acceptEdits", "bypassPermissions", "dontAsk", "auto"]
PERMISSION_MODES: tuple[str, ...] = get_args(PermissionMode)
STORES = ("file", "postgres", "redis", "memory")

# The built-in default agent: claude-agent-acp (npm @agentclientprotocol/claude-agent-acp).
CLAUDE_PACKAGE = "@agentclientprotocol/claude-agent-acp"
CLAUDE_BIN = "claude-agent-acp"


class McpServerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An MCP server an agent starts for a session (ACP `mcpServers`, stdio transport)."""

    command: str
    args: list[str] = []
    env: dict[str, str] = {}


class AgentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command: list[str]
    env: dict[str, str] = {}
    passEnv: list[str] = []  # extra variable names (or prefixes ending in *) passed from the daemon


class AlertingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """See aegisd/notify/alerts.py."""

    webhooks: list[Any] = []  # URLs, or {url, secret}
    failureThreshold: int = 5
    cooldownMs: int = 600_000


class VerificationConfig(msgspec.Struct, forbid_unknown_fields=True):
    """See aegisd/features/verify.py. The original's key was verificationProtocol; it is read too."""

    steps: list[Any] = []  # [{name, command (list or string), timeoutMs?, critical?}]; empty: detect
    criticalOnly: bool = False  # only typecheck and build steps, no tests
    autoVerifyOnStop: bool = False  # the original's (never implemented there): accepted, not acted on


class OidcConfig(msgspec.Struct, forbid_unknown_fields=True):
    """See aegisd/auth/oidc.py. On when issuer and clientId are set."""

    issuer: str = ""
    clientId: str = ""
    clientSecret: str = ""  # confidential clients; public ones rely on PKCE
    audience: str = ""  # the `aud` bearer tokens must carry (default: clientId)
    roleClaim: str = "aegis_role"
    defaultRole: str = "viewer"
    scopes: str = "openid profile email"

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.clientId)


class TelegramConfig(msgspec.Struct, forbid_unknown_fields=True):
    """See aegisd/surfaces/telegram.py. On when botToken and chatId are set."""

    botToken: str = ""
    chatId: str = ""
    apiUrl: str = "https://api.telegram.org"
    events: list[str] = msgspec.field(default_factory=lambda: ["permission", "stall", "ended"])

    @property
    def enabled(self) -> bool:
        return bool(self.botToken and self.chatId)


class EmailConfig(msgspec.Struct, forbid_unknown_fields=True):
    """See aegisd/notify/mail.py. On when smtpUrl and to are set."""

    smtpUrl: str = ""
    from_: str = msgspec.field(default="aegis@localhost", name="from")
    to: list[str] = []
    events: list[str] = msgspec.field(default_factory=lambda: ["permission", "stall", "ended"])

    @property
    def enabled(self) -> bool:
        return bool(self.smtpUrl and self.to)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 9100
    baseUrl: str = ""
    authToken: str = ""
    stateDir: str = "~/.aegis"
    socket: str = ""
    logLevel: str = "info"
    logFormat: str = "auto"  # auto | console | json (auto: json under systemd/journald or when not a terminal)
    dashboardEnabled: bool = True
    allowedWorkDirs: tuple[str, ...] = ()
    defaultPermissionMode: str = "default"
    defaultAgent: str = "claude"
    agents: dict[str, AgentSpec] = {}
    # MCP servers sessions may ask for by name (`mcpServers: ["aegis", ...]` on create); "aegis" is built in
    mcpServers: dict[str, McpServerSpec] = {}
    agentCommand: tuple[str, ...] = ()  # AEGIS_AGENT_COMMAND: overrides the default agent's command line
    memoryBridge: dict[str, Any] = {}
    sessionStore: str = "file"
    postgresUrl: str = ""
    pgTable: str = "aegis_sessions"
    pgSchema: str = "public"
    pgPoolMax: int = 5
    redisUrl: str = "redis://localhost:6379"
    redisKeyPrefix: str = "aegis"
    # a cluster: every aegisd on the same PostgreSQL tables is a node of one cluster (docs/cluster.md)
    nodeId: str = ""  # "" = the host name + a short hash of the state dir
    advertiseUrl: str = ""  # the URL other nodes reach this one at ("" = http(s)://<host>:<port>)
    clusterSecret: str = ""  # nodes authenticate to each other with it (required with a non-loopback URL)
    nodeLeaseMs: int = 15_000  # a node that has not renewed its lease for this long is lost
    tlsCert: str = ""  # PEM certificate (chain) hypercorn serves HTTPS with; needs tlsKey
    tlsKey: str = ""
    tlsCa: str = ""  # CA bundle nodes verify each other's certificates with ("" = the system's + tlsCert)
    strictRbac: bool = False
    # browser defences (aegisd/surfaces/http/_browser.py): extra Host names served, web origins allowed (with CORS)
    allowedHosts: tuple[str, ...] = ()
    allowedOrigins: tuple[str, ...] = ()
    stallThresholdMs: int = 120_000
    idleTimeoutMs: int = 1_800_000  # an idle session is closed (completed, idle_timeout) after this; 0: never
    maxSessions: int = 1000
    maxChildSessions: int = 10  # live sessions one session's agent may have created (see aegisd/auth/_agents.py)
    sessionCgroups: bool = True  # one cgroup per session where the daemon may create them (aegisd/acp/_cgroup.py)
    webhooks: list[Any] = []
    alerting: AlertingConfig = msgspec.field(default_factory=AlertingConfig)
    verification: VerificationConfig = msgspec.field(default_factory=VerificationConfig)
    oidc: OidcConfig = msgspec.field(default_factory=OidcConfig)
    telegram: TelegramConfig = msgspec.field(default_factory=TelegramConfig)
    email: EmailConfig = msgspec.field(default_factory=EmailConfig)
    ipRateLimit: int = 1200  # requests per minute per client IP on HTTP; 0: none
    sseMaxConnections: int = 100
    sseMaxPerIp: int = 10
    # loopback ports a trusted caller's screenshot may load from, besides its URL's own (aegisd/browser/screenshot.py)
    screenshotLoopbackPorts: tuple[int, ...] = ()
    acpPromptTimeoutMs: int = 120_000
    acpRequestTimeoutMs: int = 30_000
    acpInitTimeoutMs: int = 30_000
    killGraceMs: int = 3_000
    maxLineBytes: int = 16 * 1024 * 1024
    stderrTailBytes: int = 64 * 1024
    # where the config file was found (None: defaults only) and where each value came from
    configPath: str | None = None
    sources: dict[str, str] = {}

    # ---- derived values -------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return Path(os.path.expanduser(self.stateDir)).absolute()

    @property
    def socket_path(self) -> Path:
        return Path(os.path.expanduser(self.socket)) if self.socket else self.state_path / "aegisd.sock"

    @property
    def base_url(self) -> str:
        if self.baseUrl:
            return self.baseUrl.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tlsCert else 'http'}://{host}:{self.port}"


# Env var -> (config key, parser). Every documented variable is read.
def _bool(v: str) -> bool:
    if v.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if v.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def _commas(v: str) -> tuple[str, ...]:
    return tuple(p for p in (s.strip() for s in v.split(",")) if p)


def _paths(v: str) -> tuple[str, ...]:
    sep = ";" if ";" in v else ":"
    return tuple(p for p in (s.strip() for s in v.split(sep)) if p)


ENV_VARS: dict[str, tuple[str, Any]] = {
    "AEGIS_HOST": ("host", str),
    "AEGIS_PORT": ("port", int),
    "AEGIS_BASE_URL": ("baseUrl", str),
    "AEGIS_AUTH_TOKEN": ("authToken", str),
    "AEGIS_STATE_DIR": ("stateDir", str),
    "AEGIS_SOCKET": ("socket", str),
    "AEGIS_LOG_LEVEL": ("logLevel", str),
    "AEGIS_LOG_FORMAT": ("logFormat", str),
    "AEGIS_DASHBOARD_ENABLED": ("dashboardEnabled", _bool),
    "AEGIS_ALLOWED_WORK_DIRS": ("allowedWorkDirs", _paths),
    "AEGIS_AGENT_COMMAND": ("agentCommand", lambda v: tuple(shlex.split(v))),
    "AEGIS_DEFAULT_AGENT": ("defaultAgent", str),
    "AEGIS_SESSION_STORE": ("sessionStore", str),
    "AEGIS_POSTGRES_URL": ("postgresUrl", str),
    "AEGIS_PG_TABLE": ("pgTable", str),
    "AEGIS_PG_SCHEMA": ("pgSchema", str),
    "AEGIS_PG_POOL_MAX": ("pgPoolMax", int),
    "AEGIS_REDIS_URL": ("redisUrl", str),
    "AEGIS_REDIS_KEY_PREFIX": ("redisKeyPrefix", str),
    "AEGIS_STRICT_RBAC": ("strictRbac", _bool),
    "AEGIS_NODE_ID": ("nodeId", str),
    "AEGIS_ADVERTISE_URL": ("advertiseUrl", str),
    "AEGIS_CLUSTER_SECRET": ("clusterSecret", str),
    "AEGIS_NODE_LEASE_MS": ("nodeLeaseMs", int),
    "AEGIS_TLS_CERT": ("tlsCert", str),
    "AEGIS_TLS_KEY": ("tlsKey", str),
    "AEGIS_TLS_CA": ("tlsCa", str),
    "AEGIS_ALLOWED_HOSTS": ("allowedHosts", _commas),
    "AEGIS_ALLOWED_ORIGINS": ("allowedOrigins", _commas),
    "AEGIS_ACP_PROMPT_TIMEOUT_MS": ("acpPromptTimeoutMs", int),
    "AEGIS_STALL_THRESHOLD_MS": ("stallThresholdMs", int),
    "AEGIS_IDLE_TIMEOUT_MS": ("idleTimeoutMs", int),
    "AEGIS_MAX_SESSIONS": ("maxSessions", int),
    "AEGIS_MAX_CHILD_SESSIONS": ("maxChildSessions", int),
    "AEGIS_SESSION_CGROUPS": ("sessionCgroups", _bool),
    "AEGIS_SSE_MAX_CONNECTIONS": ("sseMaxConnections", int),
    "AEGIS_IP_RATE_LIMIT": ("ipRateLimit", int),
    "AEGIS_EMAIL_SMTP_URL": ("email.smtpUrl", str),
    "AEGIS_EMAIL_FROM": ("email.from", str),
    "AEGIS_EMAIL_TO": ("email.to", lambda v: [a.strip() for a in v.split(",") if a.strip()]),
    "AEGIS_TELEGRAM_BOT_TOKEN": ("telegram.botToken", str),
    "AEGIS_TELEGRAM_CHAT_ID": ("telegram.chatId", str),
    "AEGIS_TELEGRAM_API_URL": ("telegram.apiUrl", str),
    "AEGIS_OIDC_ISSUER": ("oidc.issuer", str),
    "AEGIS_OIDC_CLIENT_ID": ("oidc.clientId", str),
    "AEGIS_OIDC_CLIENT_SECRET": ("oidc.clientSecret", str),
    "AEGIS_OIDC_AUDIENCE": ("oidc.audience", str),
    "AEGIS_OIDC_ROLE_CLAIM": ("oidc.roleClaim", str),
    "AEGIS_OIDC_DEFAULT_ROLE": ("oidc.defaultRole", str),
    "AEGIS_SSE_MAX_PER_IP": ("sseMaxPerIp", int),
    "AEGIS_WEBHOOKS": ("webhooks", lambda v: [u.strip() for u in v.split(",") if u.strip()]),
    "AEGIS_KILL_GRACE_MS": ("killGraceMs", int),
    "AEGIS_ALERT_WEBHOOKS": ("alerting.webhooks", lambda v: [u.strip() for u in v.split(",") if u.strip()]),
    "AEGIS_ALERT_FAILURE_THRESHOLD": ("alerting.failureThreshold", int),
    "AEGIS_ALERT_COOLDOWN_MS": ("alerting.cooldownMs", int),
    "AEGIS_SCREENSHOT_LOOPBACK_PORTS": ("screenshotLoopbackPorts",
                                        lambda v: tuple(int(p) for p in v.replace(",", " ").split())),
}
# Keys of the config file that are not Config fields but are accepted (the original's, or for later parts).
KNOWN_EXTRA_KEYS = {"clientAuthToken", "rateLimit", "defaultSessionEnv", "name", "model"}
_SECRET_KEYS = {"authToken", "postgresUrl", "redisUrl", "clientAuthToken", "clusterSecret"}
# secrets inside a section: section -> field
_SECRET_FIELDS = {"oidc": "clientSecret", "email": "smtpUrl", "telegram": "botToken"}


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def config_file_candidates(cwd: Path | None = None) -> list[Path]:
    cwd = cwd or Path.cwd()
    home = Path.home()
    return [cwd / ".aegis" / "config.yaml", cwd / ".aegis" / "config.yml", cwd / "aegis.config.json",
            home / ".aegis" / "config.yaml", home / ".aegis" / "config.yml", home / ".aegis" / "config.json"]


def read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text) if text.strip() else {}
    else:
        from ruamel.yaml import YAML

        data = YAML(typ="safe").load(text) or {}
    if not isinstance(data, dict):
        raise ValidationError(f"{path}: the top level must be a mapping")
    return data


def load_config(*, env: Mapping[str, str] | None = None, config_path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None, cwd: Path | None = None,
                warnings: list[str] | None = None) -> Config:
    """Build the configuration. Raises :class:`ValidationError` with a clear message on bad values."""
    env = os.environ if env is None else env
    warn = warnings if warnings is not None else []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    explicit = config_path or env.get("AEGIS_CONFIG")
    path: Path | None = None
    if explicit:
        path = Path(os.path.expanduser(str(explicit)))
        if not path.exists():
            raise ValidationError(f"config file not found: {path}")
    else:
        path = next((p for p in config_file_candidates(cwd) if p.is_file()), None)
    if path is not None:
        try:
            data = read_config_file(path)
        except ValidationError:
            raise
        except Exception as exc:
            raise ValidationError(f"cannot parse config file {path}: {exc}") from exc
        fields = set(Config.__struct_fields__) - {"configPath", "sources", "agentCommand", "socket"}
        fields |= {"socket"}
        for key, val in data.items():
            if key == "verificationProtocol" and "verification" not in data:
                key = "verification"  # the original's name
            if key in fields:
                values[key] = val
                sources[key] = f"file:{path}"
            elif key not in KNOWN_EXTRA_KEYS:
                warn.append(f"{path}: unknown key {key!r} ignored")
    for var, (key, parse) in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            value = parse(raw)
        except ValueError as exc:
            raise ValidationError(f"{var}: {exc}") from exc
        if "." in key:  # one field of a section (alerting.webhooks): the file's other fields stay
            section, field = key.split(".", 1)
            values[section] = {**dict(values.get(section) or {}), field: value}
        else:
            values[key] = value
        sources[key] = f"env:{var}"
    for key, val in (overrides or {}).items():
        if val is not None:
            values[key] = val
            sources[key] = "flag"
    values["configPath"] = str(path) if path else None
    values["sources"] = sources
    try:
        cfg = msgspec.convert(values, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid configuration: {exc}") from exc
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    if cfg.defaultPermissionMode not in PERMISSION_MODES:
        raise ValidationError(f"defaultPermissionMode must be one of {', '.join(PERMISSION_MODES)}")
    if cfg.logFormat not in ("auto", "console", "json"):
        raise ValidationError("logFormat must be auto, console or json")
    if cfg.logLevel.lower() not in ("debug", "info", "warning", "warn", "error"):
        raise ValidationError("logLevel must be debug, info, warning or error")
    if cfg.sessionStore not in STORES:
        raise ValidationError(f"sessionStore must be one of {', '.join(STORES)}")
    if not (0 <= cfg.port <= 65535):
        raise ValidationError("port must be between 0 and 65535")
    if cfg.stallThresholdMs < 1000:
        raise ValidationError("stallThresholdMs must be at least 1000")
    try:
        parse_endpoints(cfg.webhooks)
    except (ValueError, msgspec.ValidationError) as exc:
        raise ValidationError(f"webhooks: {exc}") from None
    try:
        validate_alerting(cfg.alerting)
    except (ValueError, msgspec.ValidationError) as exc:
        raise ValidationError(f"alerting: {exc}") from None
    try:
        parse_steps(cfg.verification.steps)
    except (ValueError, msgspec.ValidationError) as exc:
        raise ValidationError(f"verification: {exc}") from None
    if cfg.oidc.defaultRole not in ("admin", "operator", "viewer"):
        raise ValidationError("oidc.defaultRole must be admin, operator or viewer")
    if bool(cfg.oidc.issuer) != bool(cfg.oidc.clientId):
        raise ValidationError("oidc needs both issuer and clientId (AEGIS_OIDC_ISSUER, AEGIS_OIDC_CLIENT_ID)")
    if cfg.oidc.issuer and not cfg.oidc.issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise ValidationError("oidc.issuer must be an https:// URL (http only for a local test IdP)")
    if cfg.email.smtpUrl or cfg.email.to:
        if not (cfg.email.smtpUrl and cfg.email.to):
            raise ValidationError("email needs both smtpUrl and to (AEGIS_EMAIL_SMTP_URL, AEGIS_EMAIL_TO)")
        try:
            check_smtp_url(cfg.email.smtpUrl)
        except ValueError as exc:
            raise ValidationError(f"email: {exc}") from None
        if set(cfg.email.events) - {"permission", "stall", "ended"}:
            raise ValidationError("email.events: use permission, stall, ended")
    bad = set(cfg.telegram.events) - {"permission", "stall", "ended"}
    if bad:
        raise ValidationError(f"telegram.events: unknown {', '.join(sorted(bad))}; use permission, stall, ended")
    if bool(cfg.telegram.botToken) != bool(cfg.telegram.chatId):
        raise ValidationError("telegram needs both botToken and chatId "
                              "(AEGIS_TELEGRAM_BOT_TOKEN, AEGIS_TELEGRAM_CHAT_ID)")
    if cfg.maxChildSessions < 0:
        raise ValidationError("maxChildSessions must be 0 (agents create no sessions) or more")
    try:
        for host in cfg.allowedHosts:
            host_entry(host)
        for origin in cfg.allowedOrigins:
            origin_entry(origin)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if cfg.idleTimeoutMs < 0:
        raise ValidationError("idleTimeoutMs must be 0 (never) or a number of milliseconds")
    if cfg.ipRateLimit < 0:
        raise ValidationError("ipRateLimit must be 0 (none) or a number of requests per minute")
    if cfg.acpPromptTimeoutMs < 1:
        raise ValidationError("AEGIS_ACP_PROMPT_TIMEOUT_MS must be positive")
    if any(not 0 < p < 65536 for p in cfg.screenshotLoopbackPorts):
        raise ValidationError("screenshotLoopbackPorts: ports are between 1 and 65535")
    _validate_cluster(cfg)


NODE_LEASE_MS = (3_000, 600_000)
CLUSTER_SECRET_MIN = 16


def _validate_cluster(cfg: Config) -> None:
    """TLS files and the cluster keys (docs/cluster.md, docs/security.md#tls). What depends on the store (a
    secret for a non-loopback node) is checked at start: aegisd/cluster/_identity.py check_cluster_config."""
    if bool(cfg.tlsCert) != bool(cfg.tlsKey):
        given, missing = (("tlsCert", "tlsKey (AEGIS_TLS_KEY)") if cfg.tlsCert
                          else ("tlsKey", "tlsCert (AEGIS_TLS_CERT)"))
        raise ValidationError(f"TLS needs both tlsCert and tlsKey (AEGIS_TLS_CERT, AEGIS_TLS_KEY): {given} is set, "
                              f"{missing} is not")
    for key, var in (("tlsCert", "AEGIS_TLS_CERT"), ("tlsKey", "AEGIS_TLS_KEY"), ("tlsCa", "AEGIS_TLS_CA")):
        value = getattr(cfg, key)
        if value:
            _readable_file(value, f"{key} ({var})")
    if not NODE_LEASE_MS[0] <= cfg.nodeLeaseMs <= NODE_LEASE_MS[1]:
        raise ValidationError(f"nodeLeaseMs (AEGIS_NODE_LEASE_MS) must be between {NODE_LEASE_MS[0]} and "
                              f"{NODE_LEASE_MS[1]} milliseconds, not {cfg.nodeLeaseMs}")
    if cfg.advertiseUrl:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(cfg.advertiseUrl)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValidationError(f"advertiseUrl (AEGIS_ADVERTISE_URL): {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError("advertiseUrl (AEGIS_ADVERTISE_URL) must be an http:// or https:// URL with a "
                                  f"host, such as https://node1.example.com:9100, not {cfg.advertiseUrl!r}")
    if cfg.clusterSecret and len(cfg.clusterSecret) < CLUSTER_SECRET_MIN:
        raise ValidationError(f"clusterSecret (AEGIS_CLUSTER_SECRET) must be at least {CLUSTER_SECRET_MIN} "
                              "characters (e.g. `openssl rand -hex 32`), the same on every node")


def _readable_file(value: str, what: str) -> None:
    path = Path(os.path.expanduser(value))
    try:
        with path.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise ValidationError(f"{what}: file not found: {path}") from None
    except IsADirectoryError:
        raise ValidationError(f"{what}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ValidationError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def describe(cfg: Config, *, mask: bool = True) -> list[tuple[str, Any, str]]:
    """(key, value, source) rows for `ag config show`; secrets masked."""
    rows = []
    for key in Config.__struct_fields__:
        if key in ("sources", "configPath"):
            continue
        val = getattr(cfg, key)
        if mask and key in _SECRET_KEYS and val:
            val = _mask(str(val))
        field = _SECRET_FIELDS.get(key)
        if mask and field and getattr(val, field):
            val = msgspec.structs.replace(val, **{field: _mask(getattr(val, field))})
        source = cfg.sources.get(key) or ", ".join(sorted({v for k, v in cfg.sources.items()
                                                            if k.startswith(key + ".")})) or "default"
        rows.append((key, msgspec.to_builtins(val), source))
    return rows


def _mask(value: str) -> str:
    if "://" in value and "@" in value:  # URL with credentials
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    if "://" in value:
        return value
    return "***" if len(value) < 8 else value[:2] + "***" + value[-2:]
