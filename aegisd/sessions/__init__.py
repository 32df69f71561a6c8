"""Sessions: the manager, the per-session owner task, transcripts and permission policy."""

from __future__ import annotations

from ._manager import SessionManager
from ._runner import SessionRunner

__all__ = ["SessionManager", "SessionRunner"]
