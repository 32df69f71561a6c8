"""Permission decisions (pure): which option approve/reject picks, and what the daemon does on its own when
an agent cannot apply the session's permission mode itself."""

from __future__ import annotations

import enum

from ..acp import wire as w
from ..errors import Conflict

READ_ONLY_KINDS = frozenset({"read", "search", "think", "fetch"})
EDIT_KINDS = frozenset({"edit"})


class Policy(str, enum.Enum):
    ASK = "ask"
    ALLOW = "allow"
    DENY = "deny"


def choose_option(options: list[w.PermissionOption], *, allow: bool, option_id: str | None = None) -> str:
    """The option approve (``allow=True``) or reject picks: by kind, least privilege first
    (``allow_once`` before ``allow_always``; ``reject_once`` before ``reject_always``). Option ids differ
    between agents and versions, so they are never guessed."""
    if option_id is not None:
        if not any(o.optionId == option_id for o in options):
            raise Conflict(f"the pending permission has no option {option_id!r} (options: "
                           f"{', '.join(o.optionId for o in options)})")
        return option_id
    order = ("allow_once", "allow_always") if allow else ("reject_once", "reject_always")
    for kind in order:
        for opt in options:
            if opt.kind == kind:
                return opt.optionId
    raise Conflict(f"the agent offered no {'allow' if allow else 'reject'} option "
                   f"(options: {', '.join(f'{o.optionId}:{o.kind}' for o in options)})")


def daemon_policy(mode: str, tool_kind: str | None, *, native: bool) -> Policy:
    """What the daemon does with a permission request under ``mode``.

    ``native`` means the agent applied the mode itself (``session/set_mode`` succeeded), so a request that
    still reaches us is one the agent wants a person to see — except for the two modes whose whole point is
    that nobody is asked."""
    kind = tool_kind or "other"
    if mode == "bypassPermissions":
        return Policy.ALLOW
    if mode == "dontAsk":
        return Policy.DENY
    if native:
        return Policy.ASK
    if mode == "acceptEdits":
        return Policy.ALLOW if kind in READ_ONLY_KINDS | EDIT_KINDS else Policy.ASK
    if mode == "plan":
        if kind in READ_ONLY_KINDS:
            return Policy.ALLOW
        return Policy.ASK if kind == "switch_mode" else Policy.DENY
    if mode == "auto":
        return Policy.ALLOW if kind in READ_ONLY_KINDS else Policy.ASK
    return Policy.ASK
