"""A new user's first minutes with the daemon itself: start-up failures are one readable line naming the setting
to change, logs are readable on a terminal and JSON for journald, the start says where the API and dashboard are,
the wheel carries the systemd unit and the license, and the tests ignore whatever AEGIS_* the user exported."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import FAKE_AGENT_CMD, ROOT


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "AEGIS_STATE_DIR": str(tmp_path / "state"), "AEGIS_SOCKET": str(tmp_path / "s" / "a.sock"),
           "AEGIS_AGENT_COMMAND": " ".join(FAKE_AGENT_CMD), "AEGIS_ALLOWED_WORK_DIRS": str(tmp_path)}
    env.update(extra)
    return env


def _aegisd(tmp_path: Path, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aegisd", *args], env=_env(tmp_path, **env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def test_a_busy_port_is_one_line_naming_the_port_and_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = _aegisd(tmp_path, AEGIS_PORT=str(port))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("aegisd: ") and f"port {port}" in lines[0] and "AEGIS_PORT" in lines[0]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = _aegisd(tmp_path, "--debug", AEGIS_PORT=str(taken.getsockname()[1]))
    assert r.returncode == 1 and "Traceback" in r.stdout + r.stderr


@pytest.mark.parametrize(("env", "needle", "code"), [
    ({"AEGIS_PORT": "http"}, "AEGIS_PORT", 2),
    ({"AEGIS_LOG_FORMAT": "xml"}, "logFormat", 2),
    ({"AEGIS_HOST": "203.0.113.9", "AEGIS_AUTH_TOKEN": "t" * 32}, "AEGIS_HOST", 1),  # not an address here
    ({"AEGIS_HOST": "0.0.0.0"}, "AEGIS_AUTH_TOKEN", 2),  # refuses to listen beyond loopback without auth
])
def test_startup_failures_are_one_line(tmp_path: Path, env: dict[str, str], needle: str, code: int) -> None:
    r = _aegisd(tmp_path, AEGIS_PORT="0", **env) if "AEGIS_PORT" not in env else _aegisd(tmp_path, **env)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stdout, r.stderr


def test_an_unwritable_state_dir_says_which_setting(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/aegis-state"  # even root cannot create directories in /proc
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro / "state")
    r = _aegisd(tmp_path, AEGIS_PORT="0", AEGIS_STATE_DIR=target, AEGIS_SOCKET=str(tmp_path / "s" / "a.sock"))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "AEGIS_STATE_DIR" in lines[0], r.stderr


def _first_lines_through_a_pty(tmp_path: Path, **env: str) -> str:
    """aegisd on a terminal (a pty), until its ready line; then stopped."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "aegisd"], env=_env(tmp_path, AEGIS_PORT="0", **env),
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while b"aegisd.ready" not in out:
            chunk = os.read(master, 65536)  # blocks until the daemon writes; its exit gives EIO
            assert chunk, out
            out += chunk
        while not out.endswith(b"\n"):
            out += os.read(master, 65536)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        os.close(master)
    return out.decode(errors="replace")


def test_a_terminal_gets_readable_lines_and_where_the_dashboard_is(tmp_path: Path) -> None:
    text = _first_lines_through_a_pty(tmp_path)
    ready = next(ln for ln in text.splitlines() if "aegisd.ready" in ln)
    assert not ready.lstrip().startswith("{")  # not JSON
    assert "/dashboard/" in ready and "http://127.0.0.1:" in ready


def test_journald_gets_json_even_on_a_terminal(tmp_path: Path) -> None:
    text = _first_lines_through_a_pty(tmp_path, JOURNAL_STREAM="8:12345")
    ready = json.loads(next(ln for ln in text.splitlines() if "aegisd.ready" in ln))
    assert ready["dashboard"].endswith("/dashboard/") and ready["http"].startswith("http://127.0.0.1:")


def test_the_wheel_carries_the_unit_and_the_license_and_installs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    [wheel] = list((tmp_path / "dist").glob("aegis_py-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        unit = z.read("aegisctl/data/aegisd.service").decode()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "NoNewPrivileges=yes" in unit and "Type=notify" in unit
    # a fresh environment with this wheel (its dependencies from the test's own environment, so no network)
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    import trio

    (site / "deps.pth").write_text(str(Path(trio.__file__).resolve().parent.parent) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--disable-pip-version-check", "--no-deps", str(wheel)], check=True, capture_output=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([str(venv / "bin" / "ag"), "--version"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "0." in r.stdout, r.stderr
    r = subprocess.run([str(venv / "bin" / "ag"), "service", "install", "--dry-run"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NoNewPrivileges=yes" in r.stdout and f"ExecStart={venv / 'bin' / 'aegisd'}" in r.stdout
    r = subprocess.run([str(venv / "bin" / "aegisd"), "--version"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_suite_ignores_the_users_aegis_environment(tmp_path: Path) -> None:
    """What the README tells users to export must not change a test's outcome."""
    env = {**os.environ, "AEGIS_PORT": "1", "AEGIS_AUTH_TOKEN": "exported-by-the-user", "AEGIS_HOST": "0.0.0.0",
           "AEGIS_STATE_DIR": str(tmp_path / "users-state"), "AEGIS_SESSION_STORE": "redis"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_cli.py::test_config_show_sources_and_masking",
                        "tests/test_sessions.py::test_create_prompt_read"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert not (tmp_path / "users-state").exists()
