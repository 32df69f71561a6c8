"""Screenshots of a web page (say, the dev server an agent started) in headless Chromium, driven over the
DevTools protocol on a pipe (aegisd/_cdp.py): no browser driver, nothing asyncio-bound.

SSRF guard: http(s) only; the host is resolved and every address must be public, or loopback when the caller
may reach this machine's own services (admins and local callers); private, link-local (cloud metadata),
multicast and reserved addresses and `*.local` names are refused. Everything the page then loads goes through
a guarding proxy (aegisd/_egress.py) that applies the same rules to each connection and connects only to the
addresses it checked, so neither a redirect nor a DNS answer that changes can reach past it."""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import socket
import tempfile
from typing import Any
from urllib.parse import urlsplit

import structlog
import trio

from .errors import NotImplementedYet, ValidationError

log = structlog.get_logger("aegisd.screenshot")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
TIMEOUT_S = 30.0


def find_browser(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    explicit = env.get("AEGIS_BROWSER")
    if explicit:
        return shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
    for name in BROWSERS:
        path = shutil.which(name, path=env.get("PATH"))
        if path:
            return path
    return None


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "loopback (only admins and local callers may shoot this machine)"
    if ip.is_link_local:
        return "link-local (cloud metadata lives there)"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "not a unicast address"
    if ip.is_private or not ip.is_global:
        return "a private network"
    return None


class Unresolvable(LookupError):
    """A name with no address: a network failure, not a refusal."""


async def allowed_addresses(host: str, port: int, *, allow_loopback: bool) -> list[str]:
    """The addresses of host that may be reached; ValueError saying why not (any address refused refuses
    the name: a DNS answer mixing public and private addresses is an attack, not an accident)."""
    host = host.rstrip(".").lower()
    if host.endswith(".local"):
        raise ValueError(".local names are on the local network")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unresolvable(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addrs = sorted({str(info[4][0]) for info in infos})
    for a in addrs:
        why = _refusal(ipaddress.ip_address(a.split("%")[0]), allow_loopback)
        if why:
            raise ValueError(f"it resolves to {a}, {why}")
    return addrs


async def check_url(url: str, *, allow_loopback: bool) -> tuple[str, list[str]]:
    """The host and the addresses Chromium may use for it; ValidationError when the URL is not allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("url must be an http:// or https:// URL with a host")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValidationError("url has an invalid port") from None
    try:
        return host, await allowed_addresses(host, port, allow_loopback=allow_loopback)
    except (ValueError, LookupError) as exc:
        raise ValidationError(f"refusing to screenshot {host}: {exc}") from None


async def take(url: str, *, width: int, height: int, allow_loopback: bool, browser: str,
               lifeline: Any = None, full_page: bool = False) -> tuple[bytes, list[str], str | None]:
    """PNG bytes of the page at url (the viewport width x height, or the whole page), the requests the page
    made that were refused, and the navigation's error if it failed (the error page is what is captured).
    Every connection of the browser goes through a guarded proxy (aegisd/_egress.py) that applies the same
    rules as to the URL itself, to redirects and sub-resources too. With a lifeline, the browser's process group
    dies with the daemon even if the daemon is SIGKILLed mid-shot."""
    from ._egress import GuardedProxy

    await check_url(url, allow_loopback=allow_loopback)
    proxy = GuardedProxy(lambda h, p: allowed_addresses(h, p, allow_loopback=allow_loopback))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        try:
            png, error = await _shoot(url, width, height, full_page, browser, lifeline, port)
        finally:
            nursery.cancel_scope.cancel()
    return png, proxy.blocked, error


async def _shoot(url: str, width: int, height: int, full_page: bool, browser: str, lifeline: Any,
                 proxy_port: int) -> tuple[bytes, str | None]:
    from ._cdp import CdpError
    from ._cdp import screenshot as cdp_screenshot

    with tempfile.TemporaryDirectory(prefix="aegis-shot-") as tmp:
        args = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-domain-reliability", "--no-pings",
                "--disable-client-side-phishing-detection", "--disable-default-apps", f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                # everything through the guard, loopback included (Chromium bypasses proxies for it otherwise)
                f"--proxy-server=http://127.0.0.1:{proxy_port}", "--proxy-bypass-list=<-loopback>"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "LANG": "C.UTF-8"}
        if lifeline is not None:  # marked for the reaper, like agents
            from .acp._reaper import MARKER

            env[MARKER] = lifeline.token
        try:
            return await cdp_screenshot(args, env, url=url, width=width, height=height, full_page=full_page,
                                        timeout=TIMEOUT_S, lifeline=lifeline)
        except (CdpError, OSError, ValueError) as exc:
            raise ValidationError(f"the browser made no screenshot of {url}: {exc}") from None


def unavailable(environ: dict[str, str] | None = None) -> NotImplementedYet:
    explicit = (os.environ if environ is None else environ).get("AEGIS_BROWSER")
    if explicit:
        return NotImplementedYet(f"screenshots need a headless Chromium: AEGIS_BROWSER={explicit} is not an "
                                 "executable")
    return NotImplementedYet("screenshots need a headless Chromium and none was found on PATH: install it "
                             "(apt-get install chromium) or set AEGIS_BROWSER to its path")


def png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def encode(data: bytes) -> dict[str, Any]:
    w, h = png_size(data)
    return {"screenshot": base64.b64encode(data).decode(), "width": w, "height": h}
