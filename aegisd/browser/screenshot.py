"""Screenshots of a web page (say, the dev server an agent started) in headless Chromium, driven over the
DevTools protocol on a pipe (aegisd/browser/cdp.py): no browser driver, nothing asyncio-bound.

SSRF guard: http(s) only; the host is resolved and every address must be public; private, link-local (cloud
metadata), multicast and reserved addresses and `*.local` names are refused. The daemon itself is refused
whoever asks: any address of this machine at the port of one of its listeners (so a hostile page cannot drive
the API during the shot). Loopback only for a trusted caller (an admin, a local caller), and then only the URL's
own port when the URL is on loopback (the session's dev server) and the ports of `screenshotLoopbackPorts`.
Everything the page then loads goes through a guarding proxy (aegisd/browser/egress.py) that applies the same rules to
each connection and connects only to the addresses it checked, so neither a redirect nor a DNS answer that
changes can reach past it. The control socket is a Unix socket: the proxy only opens TCP connections, and the
browser is given no other way out (no file:// from a web page, WebRTC only through the proxy)."""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import structlog
import trio

from aegisd.core.errors import NotImplementedYet, ValidationError

log = structlog.get_logger("aegisd.screenshot")

IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
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


def _unmapped(ip: IP) -> IP:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local_address(ip: IP) -> bool:
    """Whether a connection to ip stays on this machine: loopback, the unspecified address (which Linux
    connects to the local host), or an address of one of its interfaces (one a socket can bind to)."""
    ip = _unmapped(ip)
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            return False
    return True


def _host_port(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


@dataclass(frozen=True)
class Reach:
    """What one screenshot may reach besides the public internet. The daemon's own listeners are never in
    it: `daemon` lists them (`host:port` as bound or advertised; a wildcard host stands for every address of
    this machine), and any address of this machine at one of their ports is refused, whoever asks.
    `loopback_ports` are the loopback ports the page may use (empty: no loopback at all)."""

    daemon: tuple[tuple[str, int], ...] = ()
    loopback_ports: frozenset[int] = frozenset()
    trusted: bool = False

    @classmethod
    async def build(cls, url: str, *, trusted: bool, daemon_urls: Iterable[str],
                    loopback_ports: Iterable[int] = ()) -> Reach:
        """The reach of a screenshot of url. An untrusted caller gets no loopback. A trusted one (an admin,
        a local caller) gets the loopback ports configured (`screenshotLoopbackPorts`) and, when url itself is
        on loopback (the session's dev server), url's own port. daemon_urls: the daemon's listeners, as the
        daemon reports them (its HTTP URL, every address hypercorn bound, any later listener)."""
        daemon = tuple(dict.fromkeys(hp for hp in map(_host_port, daemon_urls) if hp is not None))
        if not trusted:
            return cls(daemon=daemon)
        ports = set(loopback_ports)
        target = _host_port(url)
        if target is not None:
            try:
                infos = await trio.socket.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            addrs = {_unmapped(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}
            if addrs and all(a.is_loopback for a in addrs):
                ports.add(target[1])
        return cls(daemon=daemon, loopback_ports=frozenset(ports), trusted=True)

    def daemon_ports(self) -> frozenset[int]:
        return frozenset(port for _, port in self.daemon)

    def refusal(self, ip: IP, port: int, daemon_addrs: frozenset[tuple[str, int]] = frozenset()) -> str | None:
        """Why the page may not connect to ip:port (None: it may). daemon_addrs: the addresses the daemon's
        advertised names resolve to, with their ports (a reverse proxy in front of it, say)."""
        ip = _unmapped(ip)
        if (str(ip), port) in daemon_addrs or (port in self.daemon_ports() and is_local_address(ip)):
            return "aegisd's own address (a screenshot never reaches the daemon)"
        if ip.is_loopback:
            if port in self.loopback_ports:
                return None
            if not self.trusted:
                return "loopback (only admins and local callers may shoot this machine)"
            return (f"loopback port {port} is not allowed (a loopback URL opens its own port only; add others to "
                    "screenshotLoopbackPorts)")
        if ip.is_link_local:
            return "link-local (cloud metadata lives there)"
        if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
            return "not a unicast address"
        if ip.is_private or not ip.is_global:
            return "a private network"
        return None


class Unresolvable(LookupError):
    """A name with no address: a network failure, not a refusal."""


class Guard:
    """The check every connection of one screenshot passes: the URL itself, then each connection the
    browser makes through the proxy (aegisd/browser/egress.py)."""

    def __init__(self, reach: Reach) -> None:
        self.reach = reach
        self._daemon_addrs: frozenset[tuple[str, int]] | None = None

    async def _resolve_daemon(self) -> frozenset[tuple[str, int]]:
        if self._daemon_addrs is None:
            out: set[tuple[str, int]] = set()
            for host, port in self.reach.daemon:
                try:
                    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError:
                    continue
                out |= {(str(_unmapped(ipaddress.ip_address(str(i[4][0]).split("%")[0]))), port) for i in infos}
            self._daemon_addrs = frozenset(out)
        return self._daemon_addrs

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of host that may be reached at port; ValueError saying why not (any address refused
        refuses the name: a DNS answer mixing public and private addresses is an attack, not an accident)."""
        host = host.rstrip(".").lower()
        if host.endswith(".local"):
            raise ValueError(".local names are on the local network")
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unresolvable(f"cannot resolve {host}: {exc.strerror or exc}") from None
        daemon_addrs = await self._resolve_daemon()
        addrs = sorted({str(info[4][0]) for info in infos})
        for a in addrs:
            why = self.reach.refusal(ipaddress.ip_address(a.split("%")[0]), port, daemon_addrs)
            if why:
                raise ValueError(f"it resolves to {a}, {why}")
        return addrs

    async def check_url(self, url: str) -> tuple[str, list[str]]:
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
            return host, await self.addresses(host, port)
        except (ValueError, LookupError) as exc:
            raise ValidationError(f"refusing to screenshot {host}: {exc}") from None


async def take(url: str, *, width: int, height: int, reach: Reach, browser: str,
               lifeline: Any = None, full_page: bool = False) -> tuple[bytes, list[str], str | None]:
    """PNG bytes of the page at url (the viewport width x height, or the whole page), the requests the page
    made that were refused, and the navigation's error if it failed (the error page is what is captured).
    Every connection of the browser goes through a guarded proxy (aegisd/browser/egress.py) that applies the same
    rules (reach) as to the URL itself, to redirects and sub-resources too. With a lifeline, the browser's
    process group dies with the daemon even if the daemon is SIGKILLed mid-shot."""
    from aegisd.browser.egress import GuardedProxy

    guard = Guard(reach)
    await guard.check_url(url)
    proxy = GuardedProxy(guard.addresses)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        try:
            png, error = await _shoot(url, width, height, full_page, browser, lifeline, port)
        finally:
            nursery.cancel_scope.cancel()
    return png, proxy.blocked, error


async def _shoot(url: str, width: int, height: int, full_page: bool, browser: str, lifeline: Any,
                 proxy_port: int) -> tuple[bytes, str | None]:
    from aegisd.browser.cdp import CdpError
    from aegisd.browser.cdp import screenshot as cdp_screenshot

    with tempfile.TemporaryDirectory(prefix="aegis-shot-") as tmp:
        args = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-domain-reliability", "--no-pings",
                "--disable-client-side-phishing-detection", "--disable-default-apps", f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                # everything through the guard, loopback included (Chromium bypasses proxies for it otherwise)
                f"--proxy-server=http://127.0.0.1:{proxy_port}", "--proxy-bypass-list=<-loopback>",
                # WebRTC may not open its own UDP sockets: its connections go through the guard too
                "--force-webrtc-ip-handling-policy=disable_non_proxied_udp"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "LANG": "C.UTF-8"}
        if lifeline is not None:  # marked for the reaper, like agents
            from aegisd.acp._reaper import MARKER

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
