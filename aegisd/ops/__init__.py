"""Operations: each defined once (typed params and result), served by every surface. One module per topic:
sessions (create, find, drive, end), transcript, permissions, attention (waits, polls, pending requests),
streams, commands, checks (verify, screenshot), history, templates, memory, pipelines, usage (metering and
analytics), notify (alerts, channels, webhooks), nodes (the cluster's nodes, draining), auth (keys, whoami,
users, audit), daemon (hello, health, metrics, handshake); _types holds what several share."""

from __future__ import annotations

from aegisd.ops import (  # noqa: F401  (register the operations)
    _attention,
    _auth,
    _checks,
    _commands,
    _daemon,
    _history,
    _memory,
    _nodes,
    _notify,
    _permissions,
    _pipelines,
    _sessions,
    _streams,
    _templates,
    _transcript,
    _usage,
)
from aegisd.ops._pipelines import stage_sessions
from aegisd.ops._registry import (
    REGISTRY,
    Done,
    Op,
    OpContext,
    Principal,
    call,
    call_typed,
    decode_params,
    finish,
    get_op,
    results,
    run_now,
    runs_now,
    settled,
    stream,
)
from aegisd.ops._services import Services
from aegisd.ops._types import ErrorEnvelope, session_view

__all__ = ["REGISTRY", "Done", "ErrorEnvelope", "Op", "OpContext", "Principal", "Services", "call", "call_typed",
           "decode_params", "finish", "get_op", "results", "run_now", "runs_now", "session_view", "settled",
           "stage_sessions", "stream"]
