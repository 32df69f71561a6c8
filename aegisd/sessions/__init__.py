"""Sessions: the manager, the per-session owner task, transcripts and permission policy."""

from __future__ import annotations

from aegisd.sessions.manager import SessionManager
from aegisd.sessions.runner import SessionRunner

__all__ = ["SessionManager", "SessionRunner"]
