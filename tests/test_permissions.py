from __future__ import annotations

import pytest

from aegisd.acp import wire as w
from aegisd.errors import Conflict
from aegisd.sessions._permissions import Policy, choose_option, daemon_policy

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
