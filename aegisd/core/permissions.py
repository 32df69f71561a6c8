"""Permission decisions (pure): which option approve/reject picks, and what the daemon does on its own when
an agent cannot apply the session's permission mode itself."""

from __future__ import annotations

import enum
import fnmatch
from typing import Any

import msgspec

from aegisd.core import wire as w
from aegisd.core.errors import Conflict

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


# ---- permission profiles: per-session rules the daemon enforces -----------------------------------------
class ProfileConstraints(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    readOnly: bool = False
    paths: list[str] | None = None  # globs; every path the tool touches must match one
    maxFileSize: int | None = None  # bytes of content a write may carry


class ProfileRule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    tool: str  # "*", a tool kind (read, edit, execute, ...) or a tool name/title word (Bash, Write, ...)
    behavior: str  # allow | deny | ask
    pattern: str | None = None  # glob against the command or path in the tool's input
    constraints: ProfileConstraints | None = None


class PermissionProfile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    defaultBehavior: str = "ask"  # allow | deny | ask | mode (no rule matched: the permission mode decides)
    rules: list[ProfileRule] = []


_BEHAVIORS = {"allow": Policy.ALLOW, "deny": Policy.DENY, "ask": Policy.ASK}
_PATH_KEYS = ("file_path", "path", "notebook_path", "filePath", "abs_path")
_TEXT_KEYS = ("content", "new_string", "newText", "new_source")


def validate_profile(profile: PermissionProfile) -> None:
    from aegisd.core.errors import ValidationError

    if profile.defaultBehavior not in _BEHAVIORS and profile.defaultBehavior != "mode":
        raise ValidationError("defaultBehavior must be allow, deny, ask or mode")
    if len(profile.rules) > 100:
        raise ValidationError("at most 100 rules")
    for r in profile.rules:
        if r.behavior not in _BEHAVIORS:
            raise ValidationError(f"rule for {r.tool!r}: behavior must be allow, deny or ask")
        if r.constraints and r.constraints.paths and len(r.constraints.paths) > 50:
            raise ValidationError("at most 50 paths per rule")


def _inputs(raw: Any) -> tuple[list[str], list[str], int]:
    """(paths, strings to match patterns against, size of content) from a tool's raw input."""
    if not isinstance(raw, dict):
        return [], [str(raw)] if raw else [], 0
    paths = [str(raw[k]) for k in _PATH_KEYS if isinstance(raw.get(k), str)]
    texts = [str(raw[k]) for k in ("command", "pattern", "url", "query") if isinstance(raw.get(k), str)]
    size = max((len(str(raw[k]).encode()) for k in _TEXT_KEYS if isinstance(raw.get(k), str)), default=0)
    return paths, texts + paths, size


def evaluate_profile(profile: PermissionProfile, *, kind: str | None, title: str | None, name: str | None,
                     raw_input: Any) -> Policy | None:
    """The first matching rule decides; otherwise the profile's default (None: the permission mode decides)."""
    kind = (kind or "other").lower()
    words = {w.lower() for w in ((title or "") + " " + (name or "")).replace("`", " ").split() if w}
    paths, texts, size = _inputs(raw_input)
    for rule in profile.rules:
        tool = rule.tool.lower()
        if tool != "*" and tool != kind and tool not in words:
            continue
        if rule.pattern and not any(fnmatch.fnmatchcase(t, rule.pattern) for t in texts):
            continue
        c = rule.constraints
        if c is not None:
            if c.readOnly and kind not in READ_ONLY_KINDS:
                return Policy.DENY
            if c.paths is not None and paths and not all(
                    any(fnmatch.fnmatchcase(p, g) or p.startswith(g.rstrip("*").rstrip("/") + "/") for g in c.paths)
                    for p in paths):
                return Policy.DENY
            if c.maxFileSize is not None and size > c.maxFileSize:
                return Policy.DENY
        return _BEHAVIORS[rule.behavior]
    return _BEHAVIORS.get(profile.defaultBehavior)
