"""`ag list` loads only what it needs (issue 14): a deterministic guard on the modules it imports, not a timing.

`ag list` runs in a fresh interpreter against a real daemon; what it imported is read from `sys.modules` after
the command ran. Each module named here was on its path once and cost milliseconds of every `ag list`."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import trio

from aegisctl.cli._root import COMMANDS

# Run the command as the `ag` script does, then print what was imported (on stderr: stdout is the command's).
PROBE = """
import gc, sys
sys.argv[0] = "ag"
from aegisctl.cli import main
code = None
try:
    main()
except SystemExit as exc:
    code = exc.code
print(repr((code, sorted(sys.modules), gc.get_freeze_count())), file=sys.stderr)
"""

# The other verbs' modules, the daemon, and heavy stdlib modules that `list` does not use.
NOT_FOR_LIST = [
    *sorted({f"aegisctl.cli.{target.split(':')[0]}" for name, target in COMMANDS.items() if name != "list"}),
    "aegisctl.cli._turn", "aegisctl._init", "aegisctl._login", "aegisctl._doctor", "aegisctl._catalogue",
    "aegisctl._service", "aegisctl._background", "aegisctl._port", "aegisctl._http", "aegisctl.mcp", "aegisd",
    "http.client", "ssl", "email", "urllib.request", "subprocess", "signal", "difflib", "asyncio", "trio",
    "socket", "selectors", "ruamel", "yaml", "msgspec", "shlex", "tempfile", "shutil", "logging", "argparse",
]


async def run_probe(env: dict[str, str], *args: str) -> tuple[Any, set[str], str, int]:
    with trio.fail_after(30):
        r = await trio.run_process([sys.executable, "-c", PROBE, *args], env=env, capture_stdout=True,
                                   capture_stderr=True, check=False)
    assert r.returncode == 0, r.stderr.decode()
    err = r.stderr.decode().rstrip().splitlines()
    code, modules, frozen = ast.literal_eval(err[-1])
    return code, set(modules), r.stdout.decode(), frozen


def probe_env(daemon: Any, workdir: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "AEGIS_SOCKET": str(daemon.daemon.socket_path),
            "AEGIS_CONFIG": "", "NO_COLOR": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}  # leave no __pycache__ behind: it changes what the next `ag` costs


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


async def test_ag_list_imports_only_what_it_needs(daemon: Any, workdir: Path) -> None:
    s = await daemon.create(workdir, reuse=False)
    await daemon.wait_status(s["id"], "idle")
    env = probe_env(daemon, workdir)
    code, modules, out, frozen = await run_probe(env, "list")
    assert code in (0, None)
    assert s["id"][:8] in out and "idle" in out  # the command did its work
    assert "aegisctl.cli._list" in modules and "click" in modules  # the probe sees what was imported
    assert [m for m in NOT_FOR_LIST if loaded(modules, m)] == []
    assert frozen > 1000  # click and the root group, out of the cyclic collector's sight (main())
    code, modules, out, _ = await run_probe(env, "list", "--json")
    assert code in (0, None) and json.loads(out)["sessions"][0]["id"] == s["id"]
    assert [m for m in NOT_FOR_LIST if loaded(modules, m)] == []


async def test_the_probe_sees_a_verb_that_needs_more(daemon: Any, workdir: Path) -> None:
    """The guard can fail: `ag show` loads the session commands and the turn stream."""
    s = await daemon.create(workdir, reuse=False)
    env = probe_env(daemon, workdir)
    _, modules, out, _ = await run_probe(env, "show", s["id"])
    assert s["id"] in out
    assert {"aegisctl.cli._sessions", "aegisctl.cli._turn"} <= modules
