"""Short-lived helper processes (a browser for a screenshot, a verification step): each in its own process
group, registered with the daemon's lifeline so it dies with the daemon, and killed with its children after."""

from __future__ import annotations

import os
import signal
from typing import Any

import trio


async def end_group(proc: trio.Process, lifeline: Any = None) -> None:
    """Kill the process group (whatever the process started goes too), reap it, unregister it. Shielded: it
    runs in finally blocks of cancelled work."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    with trio.CancelScope(shield=True):
        await proc.wait()
        if lifeline is not None:
            await lifeline.unregister(proc.pid)
