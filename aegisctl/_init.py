"""`ag init` and the bootstrap `ag run` does: .aegis/config.yaml with commented defaults; the defaults `ag run`
and `ag create` take from it (`name`, `model`)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import click

TEMPLATE = """\
# Aegis configuration ({title}). Precedence: defaults < this file < AEGIS_* environment < command-line flags.
# Reference: docs/architecture.md and README.md.

# Where the HTTP API listens. On a loopback host no token is needed (zero-config); any other host needs one.
host: {host}
port: {port}
{auth}
# Directories sessions may work in (realpath'd; edits apply without a restart).
# Empty = $HOME and the daemon's working directory (never /tmp or /var/tmp).
allowedWorkDirs: []

# default | plan | acceptEdits | bypassPermissions | dontAsk | auto
defaultPermissionMode: default

# The agent new sessions run. `claude` is claude-agent-acp (npm @agentclientprotocol/claude-agent-acp).
defaultAgent: claude
{model}{session_name}
# Other ACP agents:
# agents:
#   gemini:
#     command: [gemini, --experimental-acp]
#     env: {{GEMINI_API_KEY: "..."}}

# A running turn with no agent activity for this long is reported as stalled (milliseconds).
stallThresholdMs: 120000

# file (default), postgres or redis
sessionStore: file
"""


def config_path(project: Path) -> Path:
    return project / ".aegis" / "config.yaml"


def _is_loopback(host: str) -> bool:
    from aegisd.core.config import is_loopback

    return is_loopback(host)


_PLAIN = re.compile(r"[A-Za-z_][\w./@:-]*")


def _scalar(value: str) -> str:
    """A YAML scalar for a name or model: as is when plain, else quoted (JSON strings are YAML)."""
    plain = _PLAIN.fullmatch(value) and not value.endswith(":") and value.lower() not in (
        "true", "false", "yes", "no", "on", "off", "null", "y", "n")
    return value if plain else json.dumps(value, ensure_ascii=False)


def render(*, host: str = "127.0.0.1", port: int = 9100, model: str | None = None, name: str | None = None,
           token: str | None = None, title: str = "created by ag init") -> str:
    auth = f"# Bearer token for every route but /v1/health (keep it secret).\nauthToken: {token}\n" if token else ""
    model_line = (f"# Model of the sessions `ag run` and `ag create` start here (agents that offer a choice).\n"
                  f"model: {_scalar(model)}\n") if model else ""
    name_line = (f"# Name of the sessions `ag run` and `ag create` start here without --name.\n"
                 f"name: {_scalar(name)}\n") if name else ""
    return TEMPLATE.format(title=title, host=host, port=port, auth=auth, model=model_line, session_name=name_line)


def bootstrap_config(project: Path, *, port: int = 9100) -> Path | None:
    """Create the config with defaults if missing (``port``: the daemon's actual port); never overwrite. Returns
    the path when created."""
    path = config_path(project)
    if path.exists():
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(port=port, title="created by ag run"))
    except OSError:
        return None  # a read-only project still runs with defaults
    return path


def project_defaults(project: Path) -> dict[str, Any]:
    """`name` and `model` from the project's .aegis/config.yaml (`ag init --name/--model`), for the sessions
    started there without --name/--model. An unreadable or broken file gives none (the daemon reports it)."""
    path = config_path(project)
    if not path.is_file():
        return {}
    from aegisd.core.config import read_config_file

    try:
        data = read_config_file(path)
    except Exception:  # noqa: BLE001 - unreadable, or ruamel's parse errors: a broken file is the daemon's to report
        return {}
    return {k: str(data[k]) for k in ("name", "model") if isinstance(data.get(k), (str, int, float))
            and str(data[k]).strip()}


def write_config(project: Path, *, model: str | None, name: str | None, host: str | None, port: int | None,
                 force: bool) -> tuple[Path, str | None]:
    path = config_path(project)
    if path.exists() and not force:
        raise click.ClickException(
            f"{path} already exists; nothing was changed (its token, if any, is kept). Use --force to replace it.")
    host = host or "127.0.0.1"
    token = None if _is_loopback(host) else secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(host=host, port=port or 9100, model=model, name=name, token=token))
    if token:
        tmp.chmod(0o600)
    tmp.replace(path)
    return path, token
