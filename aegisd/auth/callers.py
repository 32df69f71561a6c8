"""Who is calling: whether a local caller (a control-socket peer, a loopback HTTP client) belongs to one of our
sessions — the agent itself or any tool it runs, which all run as the daemon's own user — and so gets that
session's scoped principal instead of the user's rights (see aegisd/auth/_agents.py).

The evidence, strongest first:
1. the session's cgroup (aegisd/acp/_cgroup.py): ``/proc/<pid>/cgroup`` of a socket peer, or for a TCP client the
   cgroup id the kernel records on its socket (sock_diag netlink). Nothing a process does as that user
   (``setsid``, double forks, ``env -i``) takes it out;
2. ancestry: the peer's parent chain reaches a session's agent process;
3. the environment markers every agent starts with (``AEGIS_DAEMON_INSTANCE`` + ``AEGIS_SESSION_ID``).
Without cgroups, (2) and (3) are what is left: a tool that both detaches (setsid and a double fork) and clears its
environment escapes them. docs/security.md says so.

A TCP client is looked up by its 4-tuple in the kernel's socket table, which also gives its uid. When the table
can be read at all (checked once at start) a loopback client that cannot be found there is refused rather than
trusted: a caller that resets its connection right after sending must not pass for the user."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from aegisd.acp._cgroup import SessionCgroups
from aegisd.acp._reaper import MARKER, SESSION_MARKER

log = structlog.get_logger("aegisd.callers")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_INET_DIAG_CGROUP_ID = 21
_NO_COOKIE = 0xFFFFFFFF
_MAX_ANCESTRY = 64
_INODE_CACHE = 4096


@dataclass(frozen=True)
class TcpPeer:
    """The client end of a TCP connection to us, as the kernel knows it (present only if it is local)."""

    uid: int
    inode: int
    cgroup_id: int | None


def unix_peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of a Unix-socket peer, as recorded when it connected."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _unmapped(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def tcp_peer(client: tuple[str, int], server: tuple[str, int]) -> TcpPeer | None:
    """The local socket whose own end is ``client`` and whose other end is ``server``, or None (a remote
    client, or one that is gone). Raises OSError when the kernel cannot be asked."""
    src, dst = _unmapped(client[0]), _unmapped(server[0])
    if src.version != dst.version:
        return None
    family = socket.AF_INET6 if src.version == 6 else socket.AF_INET
    try:
        return _diag(family, src.packed, client[1], dst.packed, server[1])
    except OSError:
        return _proc_net_tcp(family, src.packed, client[1], dst.packed, server[1])


def _diag(family: int, src: bytes, sport: int, dst: bytes, dport: int) -> TcpPeer | None:
    sockid = (struct.pack("!HH", sport, dport) + src.ljust(16, b"\0") + dst.ljust(16, b"\0")
              + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(msg, (0, 0))
        data = nl.recv(65536)
    length, kind = struct.unpack_from("=IH", data)
    if kind == _NLMSG_ERROR:
        err = -struct.unpack_from("=i", data, 16)[0]
        if err == 2:  # ENOENT: no such socket here
            return None
        raise OSError(err, os.strerror(err))
    body = data[16:length]
    uid, inode = struct.unpack_from("=II", body, 4 + 48 + 12)
    cgroup_id = None
    off = 4 + 48 + 20
    while off + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, off)
        if alen < 4:
            break
        if atype == _INET_DIAG_CGROUP_ID and alen >= 12:
            cgroup_id = struct.unpack_from("=Q", body, off + 4)[0]
        off += (alen + 3) & ~3
    return TcpPeer(uid=uid, inode=inode, cgroup_id=cgroup_id)


def _proc_net_tcp(family: int, src: bytes, sport: int, dst: bytes, dport: int) -> TcpPeer | None:
    """The same lookup from /proc/net/tcp{,6} (no cgroup id there)."""
    def hexaddr(raw: bytes, port: int) -> str:
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        return f"{words.hex().upper()}:{port:04X}"
    local, remote = hexaddr(src, sport), hexaddr(dst, dport)
    with open("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[1] == local and cols[2] == remote:
                return TcpPeer(uid=int(cols[7]), inode=int(cols[9]), cgroup_id=None)
    return None


class Callers:
    """Maps local callers to sessions. ``agents`` gives the pid of every live agent process by session."""

    def __init__(self, *, token: str, cgroups: SessionCgroups | None, agents: Callable[[], dict[int, str]]) -> None:
        self.token = token
        self.cgroups = cgroups
        self._agents = agents
        self._by_inode: dict[int, str | None] = {}
        self.tcp_lookups = True  # set by self_test(): whether the kernel's socket table can be read here

    def self_test(self) -> None:
        """Can TCP peers be looked up on this machine? If not, loopback clients are trusted as before (and the
        daemon says so at start)."""
        try:
            with socket.create_server(("127.0.0.1", 0)) as srv:
                with socket.create_connection(srv.getsockname()) as cli:
                    conn, _ = srv.accept()
                    with conn:
                        peer = tcp_peer(cli.getsockname(), srv.getsockname())
            self.tcp_lookups = peer is not None and peer.uid == os.getuid()
        except OSError as exc:
            log.warning("callers.tcp_lookup_unavailable", error=str(exc))
            self.tcp_lookups = False
        if not self.tcp_lookups:
            log.warning("callers.tcp_lookup_unavailable",
                        detail="loopback HTTP clients cannot be traced to sessions; use the control socket or keys")

    # ---- by pid --------------------------------------------------------------------------------
    def session_of_pid(self, pid: int) -> str | None:
        if pid <= 0:
            return None
        if self.cgroups is not None:
            sid = self.cgroups.session_of_pid(pid)
            if sid is not None:
                return sid
        agents = self._agents()
        cur = pid
        for _ in range(_MAX_ANCESTRY):
            if cur in agents:
                return agents[cur]
            cur = _ppid(cur)
            if cur <= 1:
                break
        return self._marked(pid)

    def _marked(self, pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            return None
        if f"{MARKER}={self.token}".encode() not in env:
            return None
        prefix = f"{SESSION_MARKER}=".encode()
        for item in env:
            if item.startswith(prefix):
                return item[len(prefix):].decode(errors="replace") or None
        return None

    # ---- by TCP connection ---------------------------------------------------------------------
    def session_of_tcp(self, peer: TcpPeer) -> str | None:
        if peer.cgroup_id is not None and self.cgroups is not None:
            # every process of a session is in its cgroup from its first instruction: this is the whole answer
            return self.cgroups.session_of_cgroup_id(peer.cgroup_id)
        if peer.inode in self._by_inode:
            return self._by_inode[peer.inode]
        pid = _holder(peer.inode)
        sid = self.session_of_pid(pid) if pid is not None else None
        if len(self._by_inode) >= _INODE_CACHE:
            self._by_inode.clear()
        self._by_inode[peer.inode] = sid  # socket inodes are not reused while the socket lives
        return sid


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _holder(inode: int) -> int | None:
    """A process of ours that has the socket open (scans /proc/*/fd: only when cgroups are not there)."""
    target = f"socket:[{inode}]"
    me = os.getpid()
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    return int(entry)
            except OSError:
                continue
    return None
