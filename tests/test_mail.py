"""Email notifications through a real SMTP conversation with a small local server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from aegisd.core.config import load_config
from aegisd.core.errors import ValidationError

from .conftest import DaemonHandle
from .fake_smtp import FakeSmtp


async def test_mail_on_approval_and_end(daemon_factory: Any, nursery: trio.Nursery, workdir: Path) -> None:
    smtp = FakeSmtp()
    port = await nursery.start(smtp.serve)
    d: DaemonHandle = await daemon_factory(email={"smtpUrl": f"smtp://bot%40corp:p%40ss@127.0.0.1:{port}",
                                                  "from": "aegis@corp.example", "to": ["ops@corp.example"]})
    s = await d.create(workdir, name="deploy", prompt="tool:execute:Run:make deploy")
    await smtp.wait_for(1)
    msg = smtp.messages[0]
    short = s["id"][:8]
    assert msg["Subject"] == f"[aegis] deploy ({short}) needs approval: Run"
    assert msg["From"] == "aegis@corp.example" and msg["To"] == "ops@corp.example"
    body = msg.get_content()
    assert "make deploy" in body and f"/dashboard/#/sessions/{s['id']}" in body and f"ag approve {short}" in body
    assert smtp.auth == [("bot@corp", "p@ss")]  # credentials from the URL, percent-decoded
    await d.http.delete(f"/v1/sessions/{s['id']}")
    await smtp.wait_for(2)
    assert smtp.messages[1]["Subject"] == f"[aegis] deploy ({short}) ended killed"
    health = (await d.http.get("/v1/channels/health")).json()
    assert [(h["channel"], h["healthy"]) for h in health] == [("email", True)]
    assert "p@ss" not in str(health) and "p%40ss" not in str(health)
    # and from the CLI
    import os
    import subprocess
    import sys

    env = {**os.environ, "AEGIS_SOCKET": str(d.daemon.socket_path), "NO_COLOR": "1"}
    r = await trio.to_thread.run_sync(lambda: subprocess.run([sys.executable, "-m", "aegisctl", "channels"], env=env,
                                                             capture_output=True, text=True, timeout=60))
    assert r.returncode == 0 and "email" in r.stdout and " ok " in f" {r.stdout} " and "p@ss" not in r.stdout


@pytest.mark.parametrize("email, message", [
    ({"smtpUrl": "smtp://127.0.0.1:25"}, "both smtpUrl and to"),
    ({"smtpUrl": "http://mail", "to": ["a@b"]}, "smtp://"),
    ({"smtpUrl": "smtp://mail", "to": ["a@b"], "events": ["all"]}, "email.events"),
])
def test_bad_email_config(email: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(env={}, overrides={"email": email})


def test_email_env_and_masking() -> None:
    from aegisd.core.config import describe

    cfg = load_config(env={"AEGIS_EMAIL_SMTP_URL": "smtps://u:secretpw@mail.example", "AEGIS_EMAIL_TO": "a@b, c@d",
                           "AEGIS_EMAIL_FROM": "x@y"})
    assert cfg.email.to == ["a@b", "c@d"] and cfg.email.from_ == "x@y" and cfg.email.enabled
    shown = dict((k, v) for k, v, _ in describe(cfg))["email"]
    assert "secretpw" not in str(shown)
