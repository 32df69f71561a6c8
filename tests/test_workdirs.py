from __future__ import annotations

import os
from pathlib import Path

import pytest

from aegisd.core.config import load_config
from aegisd.core.errors import InvalidWorkDir
from aegisd.sessions._workdirs import WorkDirPolicy


def policy(tmp_path: Path, dirs: list[str] | None = None, cwd: str | None = None) -> WorkDirPolicy:
    cfg = load_config(env={}, overrides={"allowedWorkDirs": dirs} if dirs is not None else {}, cwd=tmp_path)
    return WorkDirPolicy(cfg, cwd=cwd or str(tmp_path))


def test_allowed_and_realpath(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    p = policy(tmp_path, [str(tmp_path / "a")])
    assert p.validate(str(tmp_path / "a" / "b")) == str((tmp_path / "a" / "b").resolve())


@pytest.mark.parametrize("suffix", ["/../x", "/a/../../etc", "/%2e%2e/etc", "/%252e%252e/etc", "/a\\..\\x"])
def test_dotdot_refused(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "a").mkdir()
    p = policy(tmp_path, [str(tmp_path)])
    with pytest.raises(InvalidWorkDir, match=r"\.\."):
        p.validate(str(tmp_path / "a") + suffix)


def test_symlink_escape_refused(tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    inside.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (inside / "link").symlink_to(outside)
    p = policy(tmp_path, [str(inside)])
    with pytest.raises(InvalidWorkDir, match="not under an allowed"):
        p.validate(str(inside / "link"))


def test_prefix_is_not_parent(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj-evil").mkdir()
    p = policy(tmp_path, [str(tmp_path / "proj")])
    with pytest.raises(InvalidWorkDir):
        p.validate(str(tmp_path / "proj-evil"))


@pytest.mark.parametrize("bad", ["", "relative/path", "/no/such/dir/at/all", "/etc/passwd", "/x\0y"])
def test_bad_inputs(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidWorkDir):
        policy(tmp_path, ["/"]).validate(bad)


def test_defaults_exclude_tmp(tmp_path: Path) -> None:
    p = policy(tmp_path, None, cwd="/tmp")
    assert "/tmp" not in p.roots and "/var/tmp" not in p.roots
    assert os.path.realpath(os.path.expanduser("~")) in p.roots
    with pytest.raises(InvalidWorkDir):
        p.validate(str(tmp_path))  # pytest's tmp_path lives under /tmp


def test_hot_reload_from_config_file(tmp_path: Path) -> None:
    (tmp_path / ".aegis").mkdir()
    cfg_file = tmp_path / ".aegis" / "config.yaml"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cfg_file.write_text(f"allowedWorkDirs:\n  - {tmp_path / 'one'}\n")
    p = WorkDirPolicy(load_config(env={}, cwd=tmp_path), cwd=str(tmp_path))
    p.validate(str(tmp_path / "one"))
    with pytest.raises(InvalidWorkDir):
        p.validate(str(tmp_path / "two"))
    cfg_file.write_text(f"allowedWorkDirs:\n  - {tmp_path / 'two'}\n")
    os.utime(cfg_file, (1, 1))  # a distinct mtime, whatever the clock resolution
    assert p.validate(str(tmp_path / "two"))
