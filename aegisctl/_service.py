"""`ag service install|uninstall|status`: aegisd as a systemd user service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import click

UNIT_PATH = Path(os.path.expanduser("~/.config/systemd/user/aegisd.service"))


def unit_text() -> str:
    """systemd/aegisd.service (shipped in the package as aegisctl/data/aegisd.service), run by this install's
    aegisd."""
    text = (files(__package__) / "data" / "aegisd.service").read_text(encoding="utf-8")
    aegisd = Path(sys.executable).with_name("aegisd")
    exe = str(aegisd) if aegisd.exists() else f"{sys.executable} -m aegisd"
    return text.replace("ExecStart=%h/.local/bin/aegisd", f"ExecStart={exe}")


def _systemctl(*args: str) -> int:
    click.echo("$ systemctl --user " + " ".join(args))
    return subprocess.run(["systemctl", "--user", *args], check=False).returncode


def install(*, dry_run: bool = False) -> int:
    text = unit_text()
    if dry_run:
        click.echo(f"# would write {UNIT_PATH}:\n{text}")
        click.echo("$ systemctl --user daemon-reload\n$ systemctl --user enable --now aegisd")
        return 0
    if shutil.which("systemctl") is None:
        click.echo("error: systemctl not found: this machine does not run systemd (use `ag serve` instead)",
                   err=True)
        return 1
    UNIT_PATH.parent.mkdir(parents=True, exist_ok=True)
    UNIT_PATH.write_text(text)
    click.echo(f"Wrote {UNIT_PATH}")
    if _systemctl("daemon-reload") != 0 or _systemctl("enable", "--now", "aegisd") != 0:
        click.echo("error: systemctl failed (is a user session bus running? try `loginctl enable-linger`)",
                   err=True)
        return 1
    click.echo("Logs: journalctl --user -u aegisd -f")
    return 0


def uninstall() -> int:
    if shutil.which("systemctl") is not None and UNIT_PATH.exists():
        _systemctl("disable", "--now", "aegisd")
    if UNIT_PATH.exists():
        UNIT_PATH.unlink()
        click.echo(f"Removed {UNIT_PATH}")
        if shutil.which("systemctl") is not None:
            _systemctl("daemon-reload")
    else:
        click.echo("Not installed.")
    return 0


def unit_main_pid() -> int | None:
    """The pid of the daemon the user unit runs (systemd's MainPID), or None: no unit, no systemctl, or the unit
    is not running. A daemon whose pid this is runs under the unit, so `systemctl --user` must stop it (else
    Restart=on-failure or a later `start` would surprise the user)."""
    if not UNIT_PATH.exists() or shutil.which("systemctl") is None:
        return None
    try:
        p = subprocess.run(["systemctl", "--user", "show", "--property=MainPID", "--value", "aegisd"],
                           capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        pid = int(p.stdout.strip() or 0) if p.returncode == 0 else 0
    except ValueError:
        return None
    return pid or None


def stop_unit() -> int:
    """`systemctl --user stop aegisd` (it returns once the unit has stopped)."""
    return subprocess.run(["systemctl", "--user", "stop", "aegisd"], check=False).returncode


def status() -> int:
    if not UNIT_PATH.exists():
        click.echo(f"Not installed ({UNIT_PATH} missing). Install with `ag service install`.")
        return 1
    if shutil.which("systemctl") is None:
        click.echo(f"Installed at {UNIT_PATH}, but systemctl is not available here.")
        return 1
    return _systemctl("status", "--no-pager", "aegisd")
