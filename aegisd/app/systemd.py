"""sd_notify without libsystemd: READY=1, STOPPING=1 and WATCHDOG=1 datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

import trio


def notify(message: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000
    except ValueError:
        return None


async def run_watchdog(interval: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval / 2)
