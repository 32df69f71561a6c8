from __future__ import annotations

import msgspec
import pytest

from aegisd.core import wire as w
from aegisd.core.errors import Conflict
from aegisd.core.permissions import Policy, choose_option, daemon_policy

OPTS = [w.PermissionOption(optionId="allow_always", kind="allow_always"),
        w.PermissionOption(optionId="allow", kind="allow_once"),
        w.PermissionOption(optionId="reject", kind="reject_once")]


def test_least_privilege() -> None:
    assert choose_option(OPTS, allow=True) == "allow"
    assert choose_option(OPTS, allow=False) == "reject"
    assert choose_option(OPTS[:1], allow=True) == "allow_always"
    assert choose_option(OPTS, allow=True, option_id="allow_always") == "allow_always"
    with pytest.raises(Conflict):
        choose_option(OPTS, allow=True, option_id="nope")
    with pytest.raises(Conflict):
        choose_option(OPTS[:2], allow=False)


@pytest.mark.parametrize("mode,kind,native,want", [
    ("default", "execute", False, Policy.ASK),
    ("bypassPermissions", "execute", False, Policy.ALLOW),
    ("bypassPermissions", "execute", True, Policy.ALLOW),
    ("dontAsk", "read", False, Policy.DENY),
    ("acceptEdits", "edit", False, Policy.ALLOW),
    ("acceptEdits", "execute", False, Policy.ASK),
    ("acceptEdits", "edit", True, Policy.ASK),
    ("plan", "read", False, Policy.ALLOW),
    ("plan", "edit", False, Policy.DENY),
    ("plan", "switch_mode", False, Policy.ASK),
    ("auto", "search", False, Policy.ALLOW),
    ("auto", "delete", False, Policy.ASK),
])
def test_daemon_policy(mode: str, kind: str, native: bool, want: Policy) -> None:
    assert daemon_policy(mode, kind, native=native) is want


def test_profile_rules() -> None:
    from aegisd.core.permissions import PermissionProfile, evaluate_profile

    prof = msgspec.convert({"defaultBehavior": "ask", "rules": [
        {"tool": "execute", "behavior": "deny", "pattern": "rm *"},
        {"tool": "Bash", "behavior": "allow", "pattern": "git *"},
        {"tool": "edit", "behavior": "allow", "constraints": {"paths": ["/work/src/*"], "maxFileSize": 100}},
        {"tool": "read", "behavior": "allow"},
        {"tool": "*", "behavior": "allow", "constraints": {"readOnly": True}},
    ]}, PermissionProfile)

    def ev(kind: str, raw: object, title: str = "") -> Policy:
        return evaluate_profile(prof, kind=kind, title=title, name=None, raw_input=raw)
    assert ev("execute", {"command": "rm -rf /"}) is Policy.DENY
    assert ev("execute", {"command": "git status"}, title="Bash") is Policy.ALLOW
    assert ev("edit", {"file_path": "/work/src/a.py", "new_string": "x"}) is Policy.ALLOW
    assert ev("edit", {"file_path": "/etc/passwd", "new_string": "x"}) is Policy.DENY
    assert ev("edit", {"file_path": "/work/src/a.py", "content": "x" * 500}) is Policy.DENY
    assert ev("read", {"file_path": "/anything"}) is Policy.ALLOW
    assert ev("delete", {"path": "/x"}) is Policy.DENY  # the catch-all is read-only
    empty = PermissionProfile()
    assert evaluate_profile(empty, kind="edit", title="", name=None, raw_input={}) is Policy.ASK
