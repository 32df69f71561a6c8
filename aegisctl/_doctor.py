"""`ag doctor`: each check says ok / warn / fail, and how to fix it."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any


def _check(name: str, status: str, detail: str, fix: str | None = None) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "fix": fix}


def _run(cmd: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout or p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)


def run_checks(*, socket_path: str | None = None, fix: bool = False) -> list[dict[str, Any]]:
    from aegisd.core.config import CLAUDE_PACKAGE, load_config
    from aegisd.core.errors import AegisError
    from aegisd.sessions._agents import find_claude_agent, npm_prefix, resolve_agent

    results = []
    v = sys.version_info
    results.append(_check("python", "ok" if v >= (3, 11) else "fail", f"Python {v.major}.{v.minor}.{v.micro}",
                          "install Python 3.11 or newer"))
    cfg = None
    warnings: list[str] = []
    try:
        cfg = load_config(warnings=warnings)
        detail = cfg.configPath or "no config file (defaults)"
        results.append(_check("config", "warn" if warnings else "ok",
                              detail + ("; " + "; ".join(warnings) if warnings else ""),
                              "remove or correct the keys listed"))
    except AegisError as exc:
        results.append(_check("config", "fail", exc.message, "fix the config file (`ag config show`)"))

    node = shutil.which("node")
    if node:
        code, ver = _run([node, "--version"])
        major = int(ver.lstrip("v").split(".")[0]) if code == 0 and ver.startswith("v") else 0
        results.append(_check("node", "ok" if major >= 20 else "fail", f"Node.js {ver}",
                              "install Node.js 20 or newer"))
    else:
        results.append(_check("node", "fail", "node not found", "install Node.js 20 or newer (with npm)"))
    results.append(_check("npm", "ok" if shutil.which("npm") else "fail",
                          shutil.which("npm") or "npm not found", "install npm"))

    if fix and cfg is not None and not cfg.agentCommand and find_claude_agent()[0] is None and shutil.which("npm"):
        prefix = npm_prefix()
        prefix.mkdir(parents=True, exist_ok=True)
        code, text = _run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", CLAUDE_PACKAGE],
                          timeout=600)
        results.append(_check("fix: install claude-agent-acp", "ok" if code == 0 else "fail",
                              f"npm install into {prefix}" + ("" if code == 0 else f": {text[-300:]}"),
                              "run the npm command by hand and read its error"))
    if cfg is not None:
        try:
            launch = resolve_agent(cfg, None)
            exe = launch.command[0]
            found = shutil.which(exe) if not os.path.isabs(exe) else (exe if os.access(exe, os.X_OK) else None)
            if launch.source == "npx":
                results.append(_check("agent", "warn", f"{cfg.defaultAgent}: claude-agent-acp not installed; "
                                      "sessions would start it through npx (slow, needs the npm registry)",
                                      "ag doctor --fix (installs it into the project-managed npm prefix)"))
            elif found:
                results.append(_check("agent", "ok", f"{launch.name}: {' '.join(launch.command)} ({launch.source})"))
            else:
                results.append(_check("agent", "fail", f"{launch.name}: {exe} not found ({launch.source})",
                                      "fix AEGIS_AGENT_COMMAND / the agents: config, or `ag doctor --fix`"))
        except AegisError as exc:
            results.append(_check("agent", "fail", exc.message, "fix defaultAgent / agents: in the config"))

    if shutil.which("claude"):
        code, text = _run(["claude", "auth", "status"])
        results.append(_check("claude auth", "ok" if code == 0 and "not logged in" not in text.lower() else "warn",
                              text.splitlines()[0] if text else f"exit {code}", "run `claude login`"))
    elif any(os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")):
        results.append(_check("claude auth", "ok", "ANTHROPIC_API_KEY / ANTHROPIC_AUTH_TOKEN / BASE_URL set"))
    else:
        results.append(_check("claude auth", "warn", "cannot tell: no `claude` CLI and no ANTHROPIC_* credentials",
                              "run `claude login`, or set ANTHROPIC_API_KEY for the daemon"))

    if cfg is not None:
        state = cfg.state_path
        try:
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = state / ".doctor-probe"
            probe.write_text("ok")
            probe.unlink()
            results.append(_check("state dir", "ok", f"{state} writable"))
        except OSError as exc:
            results.append(_check("state dir", "fail", f"{state}: {exc}", "set AEGIS_STATE_DIR to a writable dir"))
        from aegisd.auth.audit import read_legacy, verify_records
        from aegisd.store._file import read_log

        audit_file = state / "logs" / "audit.jsonl"  # the file store's (a server store keeps it on the server)
        stored = read_log(state, "audit")
        if stored is None and (state / "audit" / "audit.jsonl").exists():  # not yet moved into the store
            audit_file = state / "audit" / "audit.jsonl"
            stored = list(enumerate(read_legacy(state / "audit"), start=1))
        if stored is not None:
            chain = verify_records([r for _, r in stored])
            results.append(_check("audit chain", "ok" if chain["ok"] else "fail",
                                  f"{chain['count']} records, chain intact" if chain["ok"] else
                                  f"record {chain.get('badSeq')}: {chain.get('reason')}",
                                  f"the audit log {audit_file} was altered; keep a copy for investigation"))
        from aegisd.store import probe_store

        try:
            where = probe_store(cfg)
            status = "warn" if where.endswith("(no AOF)") else "ok"
            results.append(_check("session store", status, where, "run Redis with `appendonly yes`, or sessions "
                                  "acknowledged just before a Redis crash can be lost"))
        except AegisError as exc:
            results.append(_check("session store", "fail", exc.message,
                                  "start the server, or fix AEGIS_POSTGRES_URL / AEGIS_REDIS_URL"))
        results.extend(_optional_checks(cfg))
        results.extend(_cluster_checks(cfg))
        sock = Path(socket_path) if socket_path else cfg.socket_path
        daemon = _daemon_checks(cfg, sock)
        results.extend(daemon)
        results.append(_fd_check(cfg, _daemon_pid(daemon)))
    return results


def _daemon_pid(checks: list[dict[str, Any]]) -> int | None:
    for c in checks:
        if c["name"] == "socket" and "(pid " in c["detail"]:
            return int(c["detail"].rsplit("(pid ", 1)[1].rstrip(")"))
    return None


def _fd_check(cfg: Any, pid: int | None) -> dict[str, Any]:
    """The open-files limit and the sessions it allows: the running daemon's (from /proc), else the limit a
    daemon started from here would raise itself to (the hard limit; a systemd unit's LimitNOFILE)."""
    from aegisd.sessions._limits import FDS_PER_SESSION, nofile, sessions_allowed

    fix = ("the shipped unit sets LimitNOFILE=65536 (`ag service install` again to update it); started by hand, "
           "raise `ulimit -Hn` first")
    open_now = ""
    if pid is not None:
        try:
            line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines()
                        if x.startswith("Max open files"))
            soft_s, hard_s = line.split()[3:5]
            soft = -1 if soft_s == "unlimited" else int(soft_s)
            hard = -1 if hard_s == "unlimited" else int(hard_s)
            open_now = f", {len(os.listdir(f'/proc/{pid}/fd'))} open now"
            who = f"aegisd (pid {pid})"
        except (OSError, StopIteration, ValueError):
            pid = None
    if pid is None:
        soft, hard = nofile()
        soft = hard  # aegisd raises its soft limit to the hard one at start
        who = "aegisd started from this shell"
    allowed = sessions_allowed(soft)
    limit = "unlimited" if soft < 0 else str(soft)
    detail = (f"{who}: open files {limit} (hard {'unlimited' if hard < 0 else hard}){open_now}: room for ~"
              f"{allowed if soft >= 0 else 'any number of'} sessions at {FDS_PER_SESSION} fds each; "
              f"maxSessions {cfg.maxSessions}")
    return _check("file descriptors", "ok" if soft < 0 or allowed >= cfg.maxSessions else "warn", detail, fix)


def _optional_checks(cfg: Any) -> list[dict[str, Any]]:
    """What the optional features need: a browser for screenshots, PyJWT and a reachable IdP for SSO."""
    from aegisd.browser.screenshot import find_browser

    out = []
    browser = find_browser()
    out.append(_check("screenshots", "ok" if browser else "warn",
                      f"headless browser: {browser}" if browser else "no Chromium found: screenshots answer 501",
                      "apt-get install chromium, or set AEGIS_BROWSER"))
    if cfg.oidc.enabled:
        try:
            import jwt  # noqa: F401
        except ImportError:
            out.append(_check("single sign-on", "fail", "oidc is configured but PyJWT is missing",
                              "pip install 'aegis-py[oidc]'"))
            return out
        import httpx

        url = cfg.oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            disc = httpx.get(url, timeout=10).raise_for_status().json()
            ok = disc.get("issuer", "").rstrip("/") == cfg.oidc.issuer.rstrip("/")
            out.append(_check("single sign-on", "ok" if ok else "fail",
                              f"{cfg.oidc.issuer}: discovery ok" + ("" if disc.get("device_authorization_endpoint")
                                                                    else " (no device flow: `ag login` unavailable)")
                              if ok else f"the IdP says its issuer is {disc.get('issuer')!r}",
                              "set AEGIS_OIDC_ISSUER to exactly the issuer the IdP announces"))
        except (httpx.HTTPError, ValueError) as exc:
            out.append(_check("single sign-on", "fail", f"{url}: {exc}",
                              "check AEGIS_OIDC_ISSUER and that the IdP is reachable from this host"))
    return out


CERT_WARN_DAYS = 14


def _cluster_checks(cfg: Any, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """This node's id and advertised URL, TLS (and when its certificate expires), and whether a cluster secret is
    set (never the secret): what check_cluster_config refuses at start is a failure here."""
    from aegisd.cluster import check_cluster_config, node_identity
    from aegisd.cluster._identity import url_is_loopback
    from aegisd.cluster._tls import cert_expiry, tls_enabled
    from aegisd.core.errors import AegisError

    out = []
    refused = None
    try:
        check_cluster_config(cfg)
    except AegisError as exc:
        refused = exc.message
    try:
        from aegisd.cluster._identity import advertise_url

        advertise_url(cfg, required=cfg.sessionStore == "postgres")  # binding 0.0.0.0 on a shared store needs one
        ident = node_identity(cfg)
        out.append(_check("node", "ok", f"id {ident.id}, advertised at {ident.url}"
                          + (" (a shared PostgreSQL store: other nodes may join)" if cfg.sessionStore == "postgres"
                             else "")))
        url: str | None = ident.url
    except (AegisError, OSError) as exc:
        url = None
        out.append(_check("node", "fail", getattr(exc, "message", None) or str(exc),
                          "set AEGIS_ADVERTISE_URL / AEGIS_NODE_ID (docs/cluster.md)"))
    if tls_enabled(cfg):
        expires = cert_expiry(cfg.tlsCert)
        if expires is None:
            out.append(_check("tls", "warn", f"on: {cfg.tlsCert} (expiry date unreadable)",
                              "check that tlsCert is a PEM certificate (openssl x509 -in <file> -noout -enddate)"))
        else:
            now = now or datetime.datetime.now(datetime.UTC)
            days = (expires - now).total_seconds() / 86400
            status = "fail" if days < 0 else "warn" if days < CERT_WARN_DAYS else "ok"
            when = f"expired {expires:%Y-%m-%d}" if days < 0 else f"expires {expires:%Y-%m-%d} ({int(days)} days)"
            out.append(_check("tls", status, f"on: {cfg.tlsCert}, {when}",
                              "renew the certificate (the same files on every node) and restart aegisd"))
    elif cfg.sessionStore == "postgres" and url is not None and not url_is_loopback(url):
        out.append(_check("tls", "warn", f"off: nodes call each other over plain HTTP ({url})",
                          "set AEGIS_TLS_CERT and AEGIS_TLS_KEY on every node (docs/security.md#tls)"))
    else:
        out.append(_check("tls", "ok", "off (plain HTTP)"))
    if refused is not None and "clusterSecret" in refused:
        out.append(_check("cluster secret", "fail", refused,
                          "set AEGIS_CLUSTER_SECRET to the same value on every node"))
    else:
        out.append(_check("cluster secret", "ok", "set" if cfg.clusterSecret else "not set"))
    if refused is not None and not any(refused in c["detail"] for c in out):
        out.append(_check("cluster config", "fail", refused, "aegisd refuses to start with it: fix the setting named"))
    return out


def _daemon_checks(cfg: Any, sock_path: Path) -> list[dict[str, Any]]:
    from aegisctl.client import Client, ClientError

    out = []
    hello = None
    if sock_path.exists():
        try:
            with Client(socket_path=sock_path, timeout=5) as c:
                hello = c.call("hello")
            out.append(_check("socket", "ok", f"{sock_path}: aegisd {hello['version']} (pid {hello['pid']})"))
            if "cgroups" in hello:
                out.append(_check("isolation", "ok", f"one cgroup per session under {hello['cgroups']}: nothing an "
                                  "agent starts outlives its session, and its tools are traced to it")
                           if hello["cgroups"] else
                           _check("isolation", "warn", "no per-session cgroups: agents' tools are traced by process "
                                  "ancestry and environment markers, which a detached tool with a cleared "
                                  "environment escapes", "run aegisd as a systemd service with Delegate=yes "
                                  "(`ag service install`), or as root"))
        except ClientError as exc:
            out.append(_check("socket", "warn", f"{sock_path}: {exc.message} (stale socket?)",
                              "start aegisd (`ag serve`); a stale socket is replaced at start"))
    else:
        out.append(_check("socket", "ok", f"{sock_path}: free (aegisd not running)"))
    port = cfg.port
    s = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    try:
        s.bind((cfg.host if cfg.host != "localhost" else "127.0.0.1", port))
        port_free = True
    except OSError:
        port_free = False
    finally:
        s.close()
    if port_free:
        out.append(_check("port", "ok", f"{cfg.host}:{port} free"))
        return out
    from aegisd.cluster._tls import client_ssl_context

    verify = client_ssl_context(cfg)  # a self-signed tlsCert is trusted as the other nodes trust it
    tls = verify if isinstance(verify, ssl.SSLContext) else None
    try:
        with Client(url=cfg.base_url, timeout=5, token=cfg.authToken or os.environ.get("AEGIS_AUTH_TOKEN"),
                    ssl_context=tls) as c:
            other = c.call("hello")
        owned = hello is None or other.get("pid") == hello.get("pid")
        out.append(_check("port", "ok" if owned else "warn", f"{cfg.host}:{port} owned by aegisd (pid "
                          f"{other.get('pid')})", "two daemons? stop one"))
        code_ok = True
    except ClientError as exc:
        code_ok = False
        out.append(_check("port", "fail", f"{cfg.host}:{port} is taken by another program ({exc.message})",
                          f"free the port, or use another: AEGIS_PORT={port + 1} ag serve"))
    if code_ok:
        try:
            with Client(url=cfg.base_url, timeout=5, ssl_context=tls) as c:
                health = c.call("health")
            out.append(_check("health", "ok" if health.get("status") == "ok" else "warn",
                              f"{cfg.base_url}/v1/health: {health.get('status')}"))
        except ClientError as exc:
            out.append(_check("health", "warn", f"{cfg.base_url}/v1/health: {exc.message}",
                              "set AEGIS_AUTH_TOKEN" if exc.status == 401 else None))
    return out
