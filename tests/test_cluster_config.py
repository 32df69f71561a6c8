"""The cluster and TLS settings are checked before the daemon starts: a bad one stops `aegisd` with exit 2 and one
line naming the setting; what a node on a shared PostgreSQL store needs (a reachable URL, a secret when others can
reach it) is checked by check_cluster_config, and only for that store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aegisd.cluster import check_cluster_config
from aegisd.core.config import load_config
from aegisd.core.errors import ValidationError

from ._certs import self_signed
from .conftest import agent_env

SECRET = "0123456789abcdef-cluster"
DEAD_PG = "postgresql://u@127.0.0.1:1/x"  # never reached: the checks come before the store is opened


def run_aegisd(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = agent_env(tmp_path)
    full.update({"AEGIS_STATE_DIR": str(tmp_path / "state"), "AEGIS_SOCKET": str(tmp_path / "s.sock"),
                 "AEGIS_PORT": "0", "AEGIS_LOG_FORMAT": "console", **env})
    return subprocess.run([sys.executable, "-m", "aegisd"], env=full, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=60)


def _cases(tls: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    cert, key = tls / "node.crt", tls / "node.key"
    pg = {"AEGIS_SESSION_STORE": "postgres", "AEGIS_POSTGRES_URL": DEAD_PG}
    return {
        "cert without key": ({"AEGIS_TLS_CERT": str(cert)}, ["tlsKey", "AEGIS_TLS_KEY"]),
        "key without cert": ({"AEGIS_TLS_KEY": str(key)}, ["tlsCert", "AEGIS_TLS_CERT"]),
        "missing cert file": ({"AEGIS_TLS_CERT": str(tls / "gone.crt"), "AEGIS_TLS_KEY": str(key)},
                              ["AEGIS_TLS_CERT", "file not found", str(tls / "gone.crt")]),
        "missing CA file": ({"AEGIS_TLS_CA": str(tls / "ca.pem")}, ["AEGIS_TLS_CA", str(tls / "ca.pem")]),
        "key that is no key": ({"AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(cert)}, ["tlsKey", str(cert)]),
        "short secret": ({"AEGIS_CLUSTER_SECRET": "too-short"}, ["AEGIS_CLUSTER_SECRET", "at least 16"]),
        "lease too short": ({"AEGIS_NODE_LEASE_MS": "500"}, ["AEGIS_NODE_LEASE_MS", "3000", "600000"]),
        "lease too long": ({"AEGIS_NODE_LEASE_MS": "3600000"}, ["AEGIS_NODE_LEASE_MS"]),
        "advertise URL not a URL": ({"AEGIS_ADVERTISE_URL": "node1:9100"}, ["AEGIS_ADVERTISE_URL", "http"]),
        "postgres, advertised elsewhere, no secret": ({**pg, "AEGIS_ADVERTISE_URL": "http://10.1.2.3:9100"},
                                                      ["AEGIS_CLUSTER_SECRET", "every node", "http://10.1.2.3:9100"]),
        "postgres, every address, no advertise URL": ({**pg, "AEGIS_HOST": "0.0.0.0", "AEGIS_AUTH_TOKEN": "t" * 32,
                                                       "AEGIS_CLUSTER_SECRET": SECRET}, ["AEGIS_ADVERTISE_URL"]),
        "postgres, https node advertising http": ({**pg, "AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(key),
                                                   "AEGIS_ADVERTISE_URL": "http://127.0.0.1:9100"},
                                                  ["advertiseUrl", "https"]),
    }


CASES = list(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_bad_setting_stops_aegisd_with_a_clear_message(tmp_path: Path, case: str) -> None:
    tls = tmp_path / "tls"
    self_signed(tls)
    env, words = _cases(tls)[case]
    res = run_aegisd(tmp_path, env)
    assert res.returncode == 2, (res.returncode, res.stderr)
    line = next((x for x in res.stderr.splitlines() if x.startswith("aegisd: ")), "")
    assert line, res.stderr
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "s.sock").exists()  # nothing was started
    assert "Traceback" not in res.stderr


def cfg(tmp_path: Path, **env: str) -> Any:
    return load_config(env={"AEGIS_STATE_DIR": str(tmp_path / "state"), **env}, cwd=tmp_path)


def test_what_a_node_on_postgres_needs(tmp_path: Path) -> None:
    pg = {"AEGIS_SESSION_STORE": "postgres", "AEGIS_POSTGRES_URL": DEAD_PG}
    check_cluster_config(cfg(tmp_path, **pg))  # loopback only: no secret needed
    check_cluster_config(cfg(tmp_path, **pg, AEGIS_ADVERTISE_URL="http://localhost:9100"))
    check_cluster_config(cfg(tmp_path, **pg, AEGIS_ADVERTISE_URL="http://10.1.2.3:9100",
                             AEGIS_CLUSTER_SECRET=SECRET))
    check_cluster_config(cfg(tmp_path, **pg, AEGIS_HOST="0.0.0.0", AEGIS_ADVERTISE_URL="http://node1:9100",
                             AEGIS_CLUSTER_SECRET=SECRET))
    # a loopback URL does not hide a bind address other machines reach
    with pytest.raises(ValidationError, match="AEGIS_CLUSTER_SECRET") as exc:
        check_cluster_config(cfg(tmp_path, **pg, AEGIS_HOST="0.0.0.0", AEGIS_ADVERTISE_URL="http://127.0.0.1:9100"))
    assert "0.0.0.0" in exc.value.message
    with pytest.raises(ValidationError, match="AEGIS_CLUSTER_SECRET"):
        check_cluster_config(cfg(tmp_path, **pg, AEGIS_HOST="10.1.2.3"))
    with pytest.raises(ValidationError, match="AEGIS_ADVERTISE_URL"):
        check_cluster_config(cfg(tmp_path, **pg, AEGIS_HOST="::", AEGIS_CLUSTER_SECRET=SECRET))


@pytest.mark.parametrize("store", ["file", "memory", "redis"])
def test_other_stores_have_no_cluster_checks(tmp_path: Path, store: str) -> None:
    check_cluster_config(cfg(tmp_path, AEGIS_SESSION_STORE=store, AEGIS_HOST="0.0.0.0"))
    check_cluster_config(cfg(tmp_path, AEGIS_SESSION_STORE=store, AEGIS_HOST="10.1.2.3",
                             AEGIS_ADVERTISE_URL="http://10.1.2.3:9100"))


def test_tls_urls_say_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    c = cfg(tmp_path, AEGIS_TLS_CERT=str(cert), AEGIS_TLS_KEY=str(key), AEGIS_PORT="9443")
    assert c.base_url == "https://127.0.0.1:9443"
    from aegisd.cluster import node_identity

    assert node_identity(c).url == "https://127.0.0.1:9443"
    check_cluster_config(c)
    assert cfg(tmp_path, AEGIS_PORT="9443").base_url == "http://127.0.0.1:9443"
