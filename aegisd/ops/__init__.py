"""Operations: each defined once (typed params), served by every surface."""

from __future__ import annotations

from aegisd.ops import _attention, _auth, _compat, _memory, _more, _pipelines, _sessions, _templates, _usage  # noqa: F401  (register the operations)
from aegisd.ops._pipelines import stage_sessions
from aegisd.ops._registry import REGISTRY, Op, OpContext, Principal, call, decode_params, get_op, stream
from aegisd.ops._services import Services
from aegisd.ops._sessions import session_view

__all__ = ["REGISTRY", "Op", "OpContext", "Principal", "Services", "call", "decode_params", "get_op",
           "session_view", "stage_sessions", "stream"]
