"""Who is calling: the principal every operation runs as, and the credential it authenticated with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Credential:
    """What a principal authenticated with, so that what it opened can end when that does."""

    kind: str  # key | sso | jwt
    ref: str  # key: SHA-256 of the secret; sso: SHA-256 of the cookie; jwt: the subject
    expires_at_ms: int | None = None  # jwt: when it stops being accepted


@dataclass
class Principal:
    """Who is calling. The Unix socket (same uid, 0600) acts as admin, unless the caller belongs to a session's
    process tree: then it is that session's agent (kind "agent", see aegisd/auth/_agents.py)."""

    kind: str = "local"  # local (socket, or loopback without auth) | master | key | oidc | anonymous | agent
    key_id: str | None = None
    role: str = "admin"
    name: str = "local"
    permissions: frozenset[str] | None = None  # None: the role's defaults
    session_id: str | None = None  # kind "agent": the session whose process tree is calling
    credential: Credential | None = None  # what it authenticated with, if that can end (auth/_credentials.py)


def agent_principal(session_id: str) -> Principal:
    """The principal of a caller inside a session's process tree."""
    return Principal(kind="agent", role="agent", name=f"agent:{session_id}", session_id=session_id)
