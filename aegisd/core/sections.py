"""Configuration sections with rules of their own, pure so that loading the configuration can check them without
importing the features that use them: webhook endpoints (and alert webhooks), verification steps, the email
server URL, and the browser-facing host and origin entries (allowedHosts, allowedOrigins)."""

from __future__ import annotations

import ipaddress
import shlex
import urllib.parse
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec


class AlertingConfig(Protocol):
    """The `alerting` section (aegisd/core/config.py), as far as its rules go."""

    webhooks: list[Any]
    failureThreshold: int
    cooldownMs: int

# ---- webhooks and alert webhooks -------------------------------------------------------------------
FORMATS = ("json", "slack", "discord")

class Endpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    secret: str | None = None
    events: list[str] | None = None
    # json: the original's payload; slack / discord: a chat message for their incoming webhooks
    format: str = "json"


def parse_endpoints(raw: Any) -> list[Endpoint]:
    out = []
    for item in raw or []:
        ep = Endpoint(url=item) if isinstance(item, str) else msgspec.convert(item, Endpoint)
        if not ep.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s): {ep.url}")
        if ep.format not in FORMATS:
            raise ValueError(f"webhook format must be one of {', '.join(FORMATS)}: {ep.format}")
        out.append(ep)
    return out


def validate_alerting(cfg: AlertingConfig) -> list[Endpoint]:
    if not 1 <= cfg.failureThreshold <= 10_000:
        raise ValueError("failureThreshold must be between 1 and 10000")
    if not 1_000 <= cfg.cooldownMs <= 7 * 86_400_000:
        raise ValueError("cooldownMs must be between 1000 and 604800000")
    eps = parse_endpoints(cfg.webhooks)
    for ep in eps:
        if ep.events:
            raise ValueError("alert webhooks take {url, secret}; events filters belong to event webhooks")
    return eps



# ---- verification steps ----------------------------------------------------------------------------
DEFAULT_STEP_TIMEOUT_MS = 300_000
CRITICAL = ("typecheck", "build")  # what criticalOnly keeps


class Step(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    command: list[str] | str
    timeoutMs: int = DEFAULT_STEP_TIMEOUT_MS
    critical: bool | None = None  # None: by name (typecheck, build)

    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    def is_critical(self) -> bool:
        return self.critical if self.critical is not None else self.name in CRITICAL


def parse_steps(raw: Any) -> list[Step]:
    steps = msgspec.convert(raw or [], list[Step])
    for s in steps:
        if not s.name or not s.argv():
            raise ValueError("each verification step needs a name and a command")
        if not 1_000 <= s.timeoutMs <= 3_600_000:
            raise ValueError(f"step {s.name}: timeoutMs must be between 1000 and 3600000")
    return steps


# ---- email -------------------------------------------------------------------------------------------
def check_smtp_url(url: str) -> None:
    p = urlsplit(url)
    if p.scheme not in ("smtp", "smtps") or not p.hostname:
        raise ValueError("smtpUrl must be smtp://[user:password@]host[:port] or smtps://…")


# ---- browsers: allowedHosts and allowedOrigins entries ---------------------------------------------
DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(host: str) -> str | None:
    """The name in a Host header value, lowercased, without port or trailing dot (IPv6 without brackets);
    None when it is not a valid host."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not _port_ok(host[end + 1:]):
            return None
        try:
            return str(ipaddress.IPv6Address(host[1:end]))
        except ValueError:
            return None
    colon = host.find(":")
    name, rest = (host, "") if colon < 0 else (host[:colon], host[colon:])
    name = name.rstrip(".")
    if not _port_ok(rest) or not name or not name.isascii() or any(c in name for c in "/\\@?#[]%* \t"):
        return None
    return name


def _port_ok(rest: str) -> bool:
    """What follows the host in a Host header: nothing, or ``:`` and a port (possibly empty)."""
    return rest == "" or (rest[0] == ":" and (rest[1:] == "" or (rest[1:].isdigit() and len(rest) <= 6)))


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_entry(entry: str) -> str:
    """One allowedHosts entry, normalized: a name, or ``.name`` for the name and its subdomains (``*.name``
    is read the same way). Raises ValueError on anything else."""
    raw = entry.strip().lower()
    if raw.startswith("*."):
        raw = raw[1:]
    suffix = raw.startswith(".")
    name = host_name(raw[1:] if suffix else raw)
    if name is None or ":" in raw:
        raise ValueError(f"allowedHosts takes host names (example.com, .example.com), not {entry!r}")
    return "." + name if suffix else name


def origin_of(value: str) -> str | None:
    """``scheme://host[:port]`` normalized (lowercase, default port dropped); None when ``value`` is not an
    http(s) origin (``null``, a path, credentials, another scheme)."""
    try:
        u = urllib.parse.urlsplit(value.strip())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in DEFAULT_PORTS or not u.hostname or u.username is not None or u.password is not None:
        return None
    if u.path not in ("", "/") or u.query or u.fragment:
        return None
    name = host_name(f"[{u.hostname}]" if ":" in u.hostname else u.hostname)
    if name is None:
        return None
    shown = f"[{name}]" if ":" in name else name
    return f"{u.scheme}://{shown}" + (f":{port}" if port is not None and port != DEFAULT_PORTS[u.scheme] else "")


def origin_entry(entry: str) -> str:
    """One allowedOrigins entry, normalized; raises ValueError unless it is exactly ``scheme://host[:port]``."""
    origin = origin_of(entry)
    if origin is None or "*" in entry:
        raise ValueError(f"allowedOrigins takes exact origins such as https://app.example.com:8443, not {entry!r}")
    return origin
