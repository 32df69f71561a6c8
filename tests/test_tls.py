"""HTTPS: the real daemon serves TLS with tlsCert/tlsKey, the client context the nodes call each other with verifies
it, `ag doctor` reports TLS and the node, and `ag config show` never shows the cluster secret."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import ssl
from pathlib import Path

import httpx
import pytest
import trio
from click.testing import CliRunner

from aegisctl.cli import cli
from aegisd.cluster._tls import _openssl_enddate, cert_expiry, check_server_tls, client_ssl_context
from aegisd.core.config import load_config
from aegisd.core.errors import ValidationError

from ._certs import self_signed
from .conftest import FAKE_AGENT_CMD, start_daemon_process
from .test_cli import AG, runner_env

SECRET = "s3cret-of-the-cluster-0123456789"


def refused_certificate(exc: BaseException) -> bool:
    """Whether a failed request failed on the server's certificate (httpx under trio keeps the SSL error as the
    cause, with an empty message)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def test_daemon_serves_https_with_the_configured_certificate(nursery: trio.Nursery, tmp_path: Path,
                                                                   short_tmp: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery,
                                    extra_env={"AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(key)})
    assert dp.http_url.startswith("https://127.0.0.1:"), dp.http_url  # the ready log names the https URL
    port = int(dp.http_url.rsplit(":", 1)[1])
    trusted = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=trusted, timeout=10) as c:
        r = await c.get(f"{dp.http_url}/v1/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        r = await c.get(f"https://localhost:{port}/v1/health")  # the other name in the certificate
        assert r.status_code == 200
    # without the certificate among the trusted ones, the handshake is refused
    async with httpx.AsyncClient(timeout=10) as c:
        with pytest.raises(httpx.ConnectError) as failed:
            await c.get(f"{dp.http_url}/v1/health")
        assert refused_certificate(failed.value)
    # plain HTTP to the TLS port gets no answer
    async with httpx.AsyncClient(timeout=10) as c:
        with pytest.raises(httpx.TransportError):
            await c.get(f"http://127.0.0.1:{port}/v1/health")
    # the daemon says https wherever it names itself (hello: what `ag` and the dashboard use)
    async with httpx.AsyncClient(verify=trusted, timeout=10) as c:
        r = await c.post(f"{dp.http_url}/v1/rpc", json={"id": 1, "op": "hello", "params": {}})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["httpUrl"] == dp.http_url
    # `ag` over https: trusts what the system trusts, and a self-signed certificate through SSL_CERT_FILE
    ag_env = {**dp.env, "AEGIS_URL": dp.http_url, "NO_COLOR": "1"}
    with trio.fail_after(30):
        res = await trio.run_process([AG, "list"], env=ag_env, capture_stderr=True, check=False)
    assert res.returncode == 1 and b"SSL_CERT_FILE" in res.stderr and b"ag serve" not in res.stderr, res.stderr
    with trio.fail_after(30):
        res = await trio.run_process([AG, "list", "--json"], env={**ag_env, "SSL_CERT_FILE": str(cert)},
                                     capture_stdout=True, check=False)
    assert res.returncode == 0 and json.loads(res.stdout)["sessions"] == []
    # the daemon on a port (AEGIS_PORT) is found over https, then used through its socket, or over https
    for extra in ({"AEGIS_SOCKET": str(dp.socket)}, {"AEGIS_SOCKET": str(tmp_path / "none.sock"),
                                                     "SSL_CERT_FILE": str(cert)}):
        port_env = {**dp.env, "AEGIS_PORT": str(port), "NO_COLOR": "1", **extra}
        with trio.fail_after(30):
            res = await trio.run_process([AG, "list", "--json"], env=port_env, capture_stdout=True,
                                         capture_stderr=True, check=False)
        assert res.returncode == 0, res.stderr
    # `ag doctor` reaches it over https, trusting the certificate as the nodes do
    doctor_env = {**dp.env, "AEGIS_PORT": str(port), "AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(key),
                  "ANTHROPIC_API_KEY": "x", "NO_COLOR": "1"}
    with trio.fail_after(30):
        res = await trio.run_process([AG, "doctor", "--json"], env=doctor_env, capture_stdout=True, check=False)
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["port"]["status"] == "ok" and checks["health"]["status"] == "ok", checks
    assert checks["health"]["detail"].startswith("https://") and checks["tls"]["detail"].startswith("on: ")
    dp.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(15):
        assert await dp.proc.wait() == 0


async def test_client_ssl_context_verifies_a_tls_node(daemon_factory: object, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    h = await daemon_factory(tlsCert=str(cert), tlsKey=str(key))  # type: ignore[operator]
    assert h.daemon.http_url.startswith("https://")
    url = h.daemon.http_url + "/v1/health"
    # one self-signed certificate shared by every node: trusted as this node's tlsCert
    peer = load_config(env={"AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(key)}, cwd=tmp_path)
    ctx = client_ssl_context(peer)
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
        assert (await c.get(url)).status_code == 200
    # tlsCa names the CA bundle: the system's CAs and tlsCert are then not trusted, only it
    other_cert, other_key = self_signed(tmp_path / "other", "other")
    with_ca = load_config(env={"AEGIS_TLS_CERT": str(other_cert), "AEGIS_TLS_KEY": str(other_key),
                               "AEGIS_TLS_CA": str(cert)}, cwd=tmp_path)
    async with httpx.AsyncClient(verify=client_ssl_context(with_ca), timeout=10) as c:
        assert (await c.get(url)).status_code == 200
    wrong_ca = load_config(env={"AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(key),
                                "AEGIS_TLS_CA": str(other_cert)}, cwd=tmp_path)
    async with httpx.AsyncClient(verify=client_ssl_context(wrong_ca), timeout=10) as c:
        with pytest.raises(httpx.ConnectError) as failed:
            await c.get(url)
        assert refused_certificate(failed.value)
    # a node with another certificate (and no tlsCa) does not trust this one
    stranger = load_config(env={"AEGIS_TLS_CERT": str(other_cert), "AEGIS_TLS_KEY": str(other_key)}, cwd=tmp_path)
    async with httpx.AsyncClient(verify=client_ssl_context(stranger), timeout=10) as c:
        with pytest.raises(httpx.ConnectError) as failed:
            await c.get(url)
        assert refused_certificate(failed.value)
    # no TLS: the system's CAs (httpx's default)
    assert client_ssl_context(load_config(env={}, cwd=tmp_path)) is True


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "a", "a")
    _, other_key = self_signed(tmp_path / "b", "b")
    cfg = load_config(env={"AEGIS_TLS_CERT": str(cert), "AEGIS_TLS_KEY": str(other_key)}, cwd=tmp_path)
    with pytest.raises(ValidationError, match="does not belong to the certificate") as exc:
        check_server_tls(cfg)
    assert str(cert) in exc.value.message and str(other_key) in exc.value.message


def test_certificate_expiry_is_read(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "tls", days=30)
    expires = cert_expiry(str(cert))
    assert expires is not None
    assert abs(expires - (dt.datetime.now(dt.UTC) + dt.timedelta(days=30))) < dt.timedelta(minutes=5)
    assert cert_expiry(str(tmp_path / "missing.pem")) is None
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to check the fallback reading")
    assert _openssl_enddate(str(cert)) == expires.replace(microsecond=0)


def _doctor(tmp_path: Path, **env: str) -> dict[str, dict[str, str]]:
    r = CliRunner().invoke(cli, ["doctor", "--json"], env=runner_env(
        tmp_path, AEGIS_AGENT_COMMAND=" ".join(FAKE_AGENT_CMD), AEGIS_PORT="0", ANTHROPIC_API_KEY="x", **env))
    assert SECRET not in r.output
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_doctor_reports_node_tls_and_cluster_secret(tmp_path: Path) -> None:
    checks = _doctor(tmp_path, AEGIS_NODE_ID="node-a")
    assert checks["node"]["status"] == "ok" and "node-a" in checks["node"]["detail"]
    assert "http://127.0.0.1:0" in checks["node"]["detail"]
    assert checks["tls"] == {"name": "tls", "status": "ok", "detail": "off (plain HTTP)", "fix": None}
    assert checks["cluster secret"]["detail"] == "not set"

    cert, key = self_signed(tmp_path / "tls", days=200)
    checks = _doctor(tmp_path, AEGIS_NODE_ID="node-a", AEGIS_TLS_CERT=str(cert), AEGIS_TLS_KEY=str(key),
                     AEGIS_CLUSTER_SECRET=SECRET, AEGIS_ADVERTISE_URL="https://node-a.example.com:9100")
    assert "https://node-a.example.com:9100" in checks["node"]["detail"]
    expires = cert_expiry(str(cert))
    assert expires is not None
    assert checks["tls"]["status"] == "ok" and f"{expires:%Y-%m-%d}" in checks["tls"]["detail"]
    assert checks["cluster secret"] == {"name": "cluster secret", "status": "ok", "detail": "set", "fix": None}

    soon, soon_key = self_signed(tmp_path / "soon", days=5)
    checks = _doctor(tmp_path, AEGIS_TLS_CERT=str(soon), AEGIS_TLS_KEY=str(soon_key))
    assert checks["tls"]["status"] == "warn" and "days)" in checks["tls"]["detail"] and checks["tls"]["fix"]


def test_doctor_fails_what_the_daemon_would_refuse(tmp_path: Path) -> None:
    checks = _doctor(tmp_path, AEGIS_SESSION_STORE="postgres", AEGIS_POSTGRES_URL="postgresql://u@127.0.0.1:1/x",
                     AEGIS_ADVERTISE_URL="http://10.1.2.3:9100")
    assert checks["cluster secret"]["status"] == "fail" and "AEGIS_CLUSTER_SECRET" in checks["cluster secret"]["fix"]
    assert checks["tls"]["status"] == "warn"  # nodes would call each other in clear
    checks = _doctor(tmp_path, AEGIS_SESSION_STORE="postgres", AEGIS_POSTGRES_URL="postgresql://u@127.0.0.1:1/x",
                     AEGIS_HOST="0.0.0.0")
    assert checks["node"]["status"] == "fail" and "AEGIS_ADVERTISE_URL" in checks["node"]["detail"]


def test_config_show_masks_the_cluster_secret(tmp_path: Path) -> None:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = CliRunner().invoke(cli, ["config", "show", "--json"], env=runner_env(tmp_path, AEGIS_CLUSTER_SECRET=SECRET))
        text = CliRunner().invoke(cli, ["config", "show"], env=runner_env(tmp_path, AEGIS_CLUSTER_SECRET=SECRET))
    finally:
        os.chdir(old)
    assert r.exit_code == 0 and text.exit_code == 0, r.output
    value = json.loads(r.stdout)["values"]["clusterSecret"]
    assert value["source"] == "env:AEGIS_CLUSTER_SECRET" and "***" in value["value"]
    assert SECRET not in r.output and SECRET[2:-2] not in text.output and "clusterSecret" in text.output
