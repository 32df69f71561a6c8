"""`ag login` / `ag logout` / `ag whoami`: single sign-on for the CLI with the OAuth device flow, through the
daemon's proxy (`/v1/auth/device/*`). Tokens are kept in `<stateDir>/auth.json` (0600), per server origin, and
used for HTTP connections to that server when no AEGIS_AUTH_TOKEN is set."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aegisctl.client import state_dir

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def auth_file() -> Path:
    return state_dir() / "auth.json"


def origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(auth_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(data: dict[str, Any]) -> None:
    path = auth_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def stored_token(url: str, now: float | None = None) -> str | None:
    """The access token saved for this server; an expired one is renewed with its refresh token when the
    identity provider gave one (None when that fails: sign in again)."""
    data = _load()
    entry = data.get(origin(url))
    if not isinstance(entry, dict) or not entry.get("access_token"):
        return None
    if entry.get("expires_at") is None or (now or time.time()) < float(entry["expires_at"]) - 30:
        return str(entry["access_token"])
    if not entry.get("refresh_token") or not entry.get("client_id"):
        return None
    import httpx

    try:
        r = httpx.post(url.rstrip("/") + "/v1/auth/device/token", timeout=30, json={
            "grant_type": "refresh_token", "refresh_token": entry["refresh_token"], "client_id": entry["client_id"]})
        body = r.json()
    except (httpx.HTTPError, ValueError):
        return None
    if r.status_code != 200 or not body.get("access_token"):
        return None
    data[origin(url)] = _entry(body, entry.get("issuer"), entry["client_id"], entry.get("refresh_token"))
    _save(data)
    return str(body["access_token"])


def _entry(body: dict[str, Any], issuer: str | None, client_id: str, old_refresh: str | None = None) -> dict[str, Any]:
    return {"access_token": body["access_token"], "id_token": body.get("id_token"),
            "refresh_token": body.get("refresh_token") or old_refresh, "client_id": client_id,
            "expires_at": time.time() + float(body.get("expires_in") or 3600), "obtained_at": time.time(),
            "issuer": issuer}


def forget(url: str) -> bool:
    data = _load()
    if data.pop(origin(url), None) is None:
        return False
    _save(data)
    return True


def device_login(http: Any, url: str, *, show: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 900) -> dict[str, Any]:
    """Run the device flow against the server at url with an httpx.Client; saves and returns the entry."""
    info = http.get(url + "/v1/auth/oidc").json()
    if not info.get("enabled"):
        raise LoginError(no_sso_message(url))
    client_id = info["clientId"]
    r = http.post(url + "/v1/auth/device/authorize", json={"client_id": client_id, "scope": info.get("scopes")})
    start = r.json()
    if r.status_code != 200:
        raise LoginError(f"the server refused to start a sign-in: {start.get('error') or start}")
    show(f"Open {start.get('verification_uri_complete') or start['verification_uri']}\n"
         f"and confirm the code {start['user_code']}.")
    interval = float(start.get("interval") or 5)
    deadline = time.monotonic() + min(timeout, float(start.get("expires_in") or timeout))
    while time.monotonic() < deadline:
        sleep(interval)
        r = http.post(url + "/v1/auth/device/token",
                      json={"grant_type": GRANT, "device_code": start["device_code"], "client_id": client_id})
        body = r.json()
        if r.status_code == 200 and body.get("access_token"):
            entry = _entry(body, info.get("issuer"), client_id)
            data = _load()
            data[origin(url)] = entry
            _save(data)
            return entry
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        raise LoginError(f"sign-in failed: {body.get('error_description') or error or body}")
    raise LoginError("the sign-in was not confirmed in time")


def no_sso_message(url: str) -> str:
    """Single sign-on is the daemon's setting, not the CLI's: say where it goes."""
    here = [v for v in ("AEGIS_OIDC_ISSUER", "AEGIS_OIDC_CLIENT_ID") if os.environ.get(v)]
    note = (f"\n  ({' and '.join(here)} {'is' if len(here) == 1 else 'are'} set in this shell, but only the daemon "
            "reads them)") if here else ""
    return (f"the daemon at {url} has no single sign-on. The OIDC settings belong to the daemon, not to `ag`: set "
            "AEGIS_OIDC_ISSUER and AEGIS_OIDC_CLIENT_ID in the daemon's environment (or `oidc: {issuer, "
            "clientId}` in its config file), restart it (`ag stop`, then start it again; under systemd add them with "
            "`systemctl --user edit aegisd` as Environment= lines, then `systemctl --user restart aegisd`), then run "
            "`ag login` again." + note)


class LoginError(Exception):
    pass


def token_expiry(url: str, now: float | None = None) -> float | None:
    """Seconds until the token saved for this server expires (None: none saved, or no expiry known)."""
    entry = _load().get(origin(url))
    if not isinstance(entry, dict) or entry.get("expires_at") is None:
        return None
    return float(entry["expires_at"]) - (now or time.time())
