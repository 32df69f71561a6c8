"""What a session's own agent (and every tool it runs) may do through the daemon.

Agents run as the daemon's user, so they can reach the control socket and the loopback HTTP port like the user
can. A caller traced to a session's process tree (aegisd/auth/callers.py) is never the user: it gets a principal
scoped to that session. It may read its own session, create sessions (which record it as their creator, count
against its owner key's quotas and against ``maxChildSessions``), and act fully on the sessions it created and
on theirs in turn (an orchestrating agent over `ag mcp` approves its workers' prompts). It may never approve or
reject its own session's prompts, send to or end its own session, manage keys, or touch any other session.

The list below is an allow-list: an operation not named here is refused to agents, so a new operation is safe
until someone decides otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from aegisd.core.models import SessionRecord

Access = Literal["read", "create", "act"]

# read: allowed, on the caller's own session and the ones it created (lists are filtered the same way);
# create: makes sessions whose creator is the caller; act: changes a session, which must be one it created
AGENT_ACCESS: dict[str, Access] = {
    **dict.fromkeys((
        "hello", "health", "handshake", "tools", "session.list", "session.get", "session.health", "session.read",
        "session.transcript", "session.transcript.cursor", "session.follow", "events.follow", "session.summary",
        "session.metrics", "session.latency", "session.tools", "session.children", "session.pane",
        "session.stats", "sessions.health", "session.permissions.get", "session.permission_profile.get",
        "usage.session", "pipeline.list", "pipeline.get", "auth.sse_token", "template.list", "template.get",
        "usage.tiers", "auth.whoami", "session.wait", "events.poll", "permissions.pending",
    ), "read"),
    **dict.fromkeys(("session.create", "sessions.batch_create", "session.spawn", "session.fork",
                     "pipeline.create"), "create"),
    **dict.fromkeys((
        "session.send", "session.approve", "session.reject", "session.interrupt", "session.kill", "session.close",
        "session.command", "session.verify", "session.screenshot", "sessions.batch_delete", "session.answer",
        "session.permissions.set", "session.permission_profile.set", "session.set_model",
        "session.set_mode",
    ), "act"),
}

MAX_DEPTH = 64


def created_by(records: Mapping[str, SessionRecord], session_id: str, creator: str) -> bool:
    """Whether ``creator`` created ``session_id``, directly or through sessions it created."""
    rec = records.get(session_id)
    for _ in range(MAX_DEPTH):
        if rec is None or rec.creatorSessionId is None:
            return False
        if rec.creatorSessionId == creator:
            return True
        rec = records.get(rec.creatorSessionId)
    return False
