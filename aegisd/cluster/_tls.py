"""TLS between nodes: the context a node verifies another node's certificate with, the check at start that the
certificate and key go together, and the certificate's expiry date (for `ag doctor`).

One self-signed certificate shared by every node works: unless ``tlsCa`` names a CA bundle, a node trusts the
system's CAs plus its own ``tlsCert``."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
from pathlib import Path

from aegisd.core.config import Config
from aegisd.core.errors import ValidationError


def _path(value: str) -> str:
    return os.path.expanduser(value)


def tls_enabled(config: Config) -> bool:
    return bool(config.tlsCert and config.tlsKey)


def client_ssl_context(config: Config) -> ssl.SSLContext | bool:
    """What an HTTP client (httpx ``verify=``) calling another node uses: True (the system's CAs) when this node
    serves no TLS; else a context trusting ``tlsCa`` if set, or the system's CAs plus ``tlsCert``. Host names are
    checked."""
    if not tls_enabled(config) and not config.tlsCa:
        return True
    if config.tlsCa:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_path(config.tlsCa))
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # the system's CAs
        ctx.load_verify_locations(cafile=_path(config.tlsCert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check_server_tls(config: Config) -> None:
    """The certificate and key load and go together, and ``tlsCa`` is a CA bundle: refused at start with the
    file named, rather than from inside the HTTP server."""
    if not tls_enabled(config):
        if config.tlsCa:
            _check_ca(config.tlsCa)
        return
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key = _path(config.tlsCert), _path(config.tlsKey)
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as exc:
        why = "the key does not belong to the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else \
            f"not a PEM certificate and its private key ({exc.reason or exc})"
        raise ValidationError(f"TLS: cannot use tlsCert {cert} with tlsKey {key}: {why}") from None
    except OSError as exc:
        raise ValidationError(f"TLS: cannot read tlsCert {cert} / tlsKey {key}: {exc.strerror or exc}") from None
    if config.tlsCa:
        _check_ca(config.tlsCa)


def _check_ca(value: str) -> None:
    path = _path(value)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(f"tlsCa (AEGIS_TLS_CA) {path}: not a PEM CA bundle ({exc})") from None


def cert_expiry(path: str) -> dt.datetime | None:
    """When the (first) certificate in a PEM file expires (UTC): read with the ``cryptography`` package, else
    ``openssl x509 -enddate``; None when neither can tell."""
    try:
        from cryptography import x509
    except ImportError:
        return _openssl_enddate(_path(path))
    try:
        cert = x509.load_pem_x509_certificate(Path(_path(path)).read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc


def _openssl_enddate(path: str) -> dt.datetime | None:
    try:
        out = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", path], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()  # notAfter=Jan  2 03:04:05 2027 GMT
    if out.returncode != 0 or not text.startswith("notAfter="):
        return None
    try:
        when = dt.datetime.strptime(" ".join(text.split("=", 1)[1].split()), "%b %d %H:%M:%S %Y %Z")
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC)
