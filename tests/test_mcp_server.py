"""`ag mcp` without a daemon or without the SDK (the live tool tests are tests/e2e/test_mcp.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_without_the_sdk_it_says_what_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "mcp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named mcp (test)')\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(shadow.parent),
           "AEGIS_SOCKET": str(tmp_path / "none.sock")}
    r = subprocess.run([sys.executable, "-m", "aegisctl", "mcp"], env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 1 and "pip install 'aegis-py[mcp]'" in r.stderr, r.stderr
    assert r.stdout == ""
